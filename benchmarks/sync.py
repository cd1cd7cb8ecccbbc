"""Weight-sync benchmark: our bucketed, checksummed, versioned broadcast (tempsamp.sync.weights) vs the
plain transports of the same bytes: one raw broadcast of a flat buffer (pre-touched, and freshly
allocated) and one broadcast per tensor into the receiver's existing tensors, for model-shaped tensor
sets of 50 MB - 1 GB. Sender and receiver are two processes joined by gloo on loopback (NCCL on a
GPU machine: `--backend nccl`). Prints GB/s and the ratio to the fastest transport measured in the
same run; appends to RESULTS.md. A bucket sweep: `--bucket-mb 8,32,128,256 --wires per_tensor,packed`.
`--checksum-ablation` also times ours with both sides' checksums replaced by a constant (a diagnostic of
what the checksums cost; the product always checksums).

    python benchmarks/sync.py [--sizes-mb 50,200,1000] [--bucket-mb 0] [--wires auto] [--repeats 3]
                              [--checksum-ablation]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch
import torch.multiprocessing as mp
from _common import append_results


def model_like(total_mb: int, seed: int = 0) -> list[tuple[str, torch.Tensor]]:
    """bf16 tensors in transformer proportions (4 projections + 3 MLP mats + norms per layer)."""
    g = torch.Generator().manual_seed(seed)
    hidden = 1024
    out, total, layer = [], 0, 0
    budget = total_mb << 20
    while total < budget:
        for name, shape in (("q_proj", (hidden, hidden)), ("k_proj", (hidden // 4, hidden)),
                            ("v_proj", (hidden // 4, hidden)), ("o_proj", (hidden, hidden)),
                            ("gate_proj", (3 * hidden, hidden)), ("up_proj", (3 * hidden, hidden)),
                            ("down_proj", (hidden, 3 * hidden)), ("input_layernorm", (hidden,))):
            t = torch.randn(shape, generator=g).to(torch.bfloat16)
            out.append((f"model.layers.{layer}.{name}.weight", t))
            total += t.numel() * 2
            if total >= budget:
                break
        layer += 1
    return out


NO_CK = ", no checksums"


def _worker(rank: int, port: int, sizes: list[int], buckets_mb: list[int], wires: list[str], repeats: int,
            backend: str, q, ablate: bool = False) -> None:
    import contextlib

    import msgspec

    import tempsamp.sync.weights as weights

    from tempsamp.sync.weights import (IN_FLIGHT, BufferRing, SyncPlan, make_group, plan_buckets, receive_plan,
                                       send_streaming)

    dev = torch.device(f"cuda:{rank}") if backend == "nccl" else torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(dev)
    pg, _store = make_group("127.0.0.1", port, rank, 2, backend, 600.0, device=dev if backend == "nccl" else None)

    def barrier():
        pg.broadcast(torch.zeros(1, device=dev), 0).wait()
        if backend == "nccl":
            torch.cuda.synchronize()

    def timed(fn) -> float:
        barrier()
        t = time.perf_counter()
        fn()
        if backend == "nccl":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    @contextlib.contextmanager
    def no_checksums():  # diagnostic only: both sides' checksums become a constant (they still travel)
        saved = weights.checksum, weights.parts_checksum
        weights.checksum = weights.parts_checksum = lambda *_: 0
        try:
            yield
        finally:
            weights.checksum, weights.parts_checksum = saved

    ring = BufferRing(IN_FLIGHT + 1)  # the engine's receive buffers, kept across syncs as the engines keep them

    def ours(named, bucket_mb, wire):
        # end to end: plan (rank 0) -> send each bucket + its checksum while earlier ones travel ->
        # receiver verifies + unpacks each while the next ones arrive
        if rank == 0:
            plan, groups = plan_buckets(named, bucket_mb << 20, version=1, wire=wire)
            payload = torch.frombuffer(bytearray(msgspec.json.encode(plan)), dtype=torch.uint8)
        # the plan travels through Ray in the trainer; here as JSON through the same group (small)
        size = torch.tensor([payload.numel() if rank == 0 else 0], dtype=torch.int64, device=dev)
        pg.broadcast(size, 0).wait()
        pbuf = payload.to(dev) if rank == 0 else torch.empty(int(size.item()), dtype=torch.uint8, device=dev)
        pg.broadcast(pbuf, 0).wait()
        if rank == 0:
            send_streaming(pg, plan, groups)
        else:
            plan = msgspec.json.decode(pbuf.cpu().numpy().tobytes(), type=SyncPlan)
            n = sum(len(part) for part in receive_plan(pg, plan, device=dev, ring=ring))
            assert n == len(named)

    for mb in sizes:
        named = [(n, t.to(dev)) for n, t in model_like(mb)]
        nbytes = sum(t.numel() * t.element_size() for _, t in named)
        # the receiver's tensors exist before a sync (the engine's parameters): allocated and touched once
        dst = [x if rank == 0 else torch.zeros_like(x) for _, x in named]
        flat = torch.zeros(nbytes, dtype=torch.uint8, device=dev)
        res: dict[str, list[float]] = {"raw_warm": [], "raw_fresh": [], "per_tensor": []}
        res.update({f"ours {w} {b}MB{x}": [] for w in wires for b in buckets_mb for x in ("", NO_CK)[:1 + ablate]})
        for _ in range(repeats):
            # raw: one flat buffer already packed, allocated and touched before (the link's limit)
            res["raw_warm"].append(timed(lambda: pg.broadcast(flat, 0).wait()))
            # raw into a freshly allocated buffer (what the benchmark measured before: page faults included)
            res["raw_fresh"].append(timed(lambda: pg.broadcast(torch.empty(nbytes, dtype=torch.uint8, device=dev),
                                                               0).wait()))
            # per tensor: one broadcast per parameter, straight into the receiver's existing tensors
            res["per_tensor"].append(timed(lambda: [pg.broadcast(x, 0).wait() for x in dst]))
            for w in wires:
                for b in buckets_mb:
                    res[f"ours {w} {b}MB"].append(timed(lambda: ours(named, b, w)))
                    if ablate:
                        with no_checksums():
                            res[f"ours {w} {b}MB{NO_CK}"].append(timed(lambda: ours(named, b, w)))
        if rank == 1:
            q.put((mb, nbytes, len(named), {k: min(v) for k, v in res.items()}))
        del named, dst, flat


def breakdown(mb: int = 256, repeats: int = 3) -> dict[str, float]:
    """GB/s of what a bucketed sync does to every byte besides moving it, one process, same run: the old
    pack (a new zero-filled buffer, then a copy), a copy into a reused buffer, crc32 (zlib), xxh3-64."""
    import zlib

    import xxhash

    src = torch.randint(0, 255, (mb << 20,), dtype=torch.uint8)
    warm = torch.empty_like(src)
    warm.copy_(src)
    ops = {"new zeroed buffer + copy (old pack)": lambda: torch.zeros_like(src).copy_(src),
           "copy into a reused buffer": lambda: warm.copy_(src),
           "crc32 (zlib, old checksum)": lambda: zlib.crc32(src.numpy()),
           "xxh3-64 (new checksum)": lambda: xxhash.xxh3_64_intdigest(src.numpy())}
    out = {}
    for name, fn in ops.items():
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
        out[name] = (mb << 20) / 1e9 / best
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes-mb", default="50,200,1000")
    ap.add_argument("--bucket-mb", default="0", help="comma-separated bucket sizes to run ours with (0 = the "
                    "backend's default, tempsamp.sync.weights.BUCKET_MB)")
    ap.add_argument("--wires", default="auto", help="comma-separated: auto (the wire the learner picks for the "
                    "device), per_tensor, packed")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backend", choices=["gloo", "nccl"], default="gloo")
    ap.add_argument("--checksum-ablation", action="store_true", help="also time ours without checksums "
                    "(diagnostic: what the checksums cost)")
    ap.add_argument("--note", default="", help="a line appended under the table")
    a = ap.parse_args()
    sizes = [int(x) for x in a.sizes_mb.split(",")]
    from tempsamp.sync.weights import bucket_mb_for, free_port

    buckets = [bucket_mb_for(a.backend, int(x)) for x in a.bucket_mb.split(",")]
    wires = [("per_tensor" if a.backend == "gloo" else "packed") if w == "auto" else w for w in a.wires.split(",")]
    port = free_port()
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, port, sizes, buckets, wires, a.repeats, a.backend, q,
                                                           a.checksum_ablation))
             for r in range(2)]
    for p in procs:
        p.start()
    results = [q.get(timeout=1800) for _ in sizes]
    for p in procs:
        p.join()
    dev = torch.cuda.get_device_name(0) if a.backend == "nccl" else f"{platform.machine()}, {os.cpu_count()} cores"
    ours_keys = [k for k in results[0][3] if k.startswith("ours")]
    transports = ("raw_warm", "raw_fresh", "per_tensor")
    lines = [f"## sync — {time.strftime('%Y-%m-%d %H:%M')} — {a.backend}, {dev}",
             f"best of {a.repeats}; GB/s = bytes / wall time; ratio = our time / the fastest transport of the same "
             "run (raw warm: one pre-touched flat buffer; raw fresh: one newly allocated flat buffer; per-tensor: "
             "one broadcast per tensor into the receiver's existing tensors)",
             "| weights | tensors | raw warm GB/s | raw fresh GB/s | per-tensor GB/s | "
             + " | ".join(f"{k} GB/s | ratio" for k in ours_keys) + " |",
             "|---|---|---|---|---|" + "---|---|" * len(ours_keys)]
    for mb, nbytes, nt, r in results:
        gb = nbytes / 1e9
        fastest = min(r[k] for k in transports)
        cells = [f"{gb / r[k]:.2f}" for k in transports]
        cells += [f"{gb / r[k]:.2f} | {r[k] / fastest:.2f}x" for k in ours_keys]
        lines.append(f"| {mb} MB | {nt} | " + " | ".join(cells) + " |")
    lines.append("ours / per-tensor: " + "; ".join(
        f"{mb} MB " + ", ".join(f"{k.removeprefix('ours ')} {r[k] / r['per_tensor']:.2f}x" for k in ours_keys)
        for mb, _, _, r in results))
    lines.append("ours = plan + checksummed, versioned buckets + receiver verify and unpack (loading into the "
                 "engine's parameters is not timed, for per-tensor neither); target: ours <= 1.3x the fastest")
    if a.backend == "gloo":
        lines.append("per-byte costs on this machine (one process, 256 MB, GB/s): " + ", ".join(
            f"{k} {v:.2f}" for k, v in breakdown().items()))
    if a.note:
        lines.append(a.note)
    append_results(lines)


if __name__ == "__main__":
    main()
