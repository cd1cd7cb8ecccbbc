"""Weight-sync benchmark: our bucketed, checksummed, versioned broadcast (tempsamp.sync.weights) vs the
plain transports of the same weights, for model-shaped tensor sets of 50 MB - 1 GB: one broadcast per
tensor into the receiver's existing tensors (per-tensor); the tensors packed into one pre-touched flat
buffer, one broadcast into the receiver's pre-touched flat buffer, views there (flat); and, as
references, one broadcast of bytes that are already packed, into a pre-touched buffer (raw warm: the
link's limit, not a way to send weights, which are not packed yet) or a newly allocated one (raw
fresh). Sender and receiver are two processes joined by gloo on loopback (NCCL on a GPU machine:
`--backend nccl`). Prints GB/s, the ratio to the fastest weight transport and to the link measured in
the same run, and each side's CPU time per GB (where the time goes); appends to RESULTS.md. A bucket
sweep: `--bucket-mb 8,32,128,256 --wires per_tensor,packed`.
`--checksum-ablation` also times ours with both sides' checksums replaced by a constant (a diagnostic of
what the checksums cost; the product always checksums).

    python benchmarks/sync.py [--sizes-mb 50,200,1000] [--bucket-mb 0] [--wires auto] [--repeats 3]
                              [--checksum-ablation]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
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
    torch.set_num_threads(1)  # the two processes share the cores; idle intra-op threads spin and take CPU from gloo
    if backend == "nccl":
        torch.cuda.set_device(dev)
    pg, _store = make_group("127.0.0.1", port, rank, 2, backend, 600.0, device=dev if backend == "nccl" else None)

    def barrier():
        pg.broadcast(torch.zeros(1, device=dev), 0).wait()
        if backend == "nccl":
            torch.cuda.synchronize()

    def cpu_s() -> float:  # this process, all threads (gloo's included)
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def timed(fn) -> tuple[float, float]:
        barrier()
        t, c = time.perf_counter(), cpu_s()
        fn()
        if backend == "nccl":
            torch.cuda.synchronize()
        return time.perf_counter() - t, cpu_s() - c

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
        offsets, off = [], 0
        for _, x in named:
            offsets.append((off, x.numel() * x.element_size()))
            off += x.numel() * x.element_size()

        def flat_packed():
            # the weights packed into one pre-touched buffer, one broadcast, the receiver's tensors are views
            if rank == 0:
                for (o, n), (_, x) in zip(offsets, named):
                    flat[o: o + n].copy_(x.reshape(-1).view(torch.uint8))
            pg.broadcast(flat, 0).wait()
            if rank == 1:
                views = [flat[o: o + n].view(x.dtype).reshape(x.shape) for (o, n), (_, x) in zip(offsets, named)]
                assert len(views) == len(named)

        res: dict[str, list[tuple[float, float]]] = {"raw_warm": [], "raw_fresh": [], "per_tensor": [], "flat": []}
        res.update({f"ours {w} {b}MB{x}": [] for w in wires for b in buckets_mb for x in ("", NO_CK)[:1 + ablate]})
        for w in wires:  # steady state: every slot of the receiver's ring touched, as after an engine's first syncs
            for b in buckets_mb:
                for _ in range(ring.slots):
                    ours(named, b, w)
        for _ in range(repeats):
            # raw: one flat buffer already packed, allocated and touched before (the link's limit)
            res["raw_warm"].append(timed(lambda: pg.broadcast(flat, 0).wait()))
            # raw into a freshly allocated buffer (what the benchmark measured before: page faults included)
            res["raw_fresh"].append(timed(lambda: pg.broadcast(torch.empty(nbytes, dtype=torch.uint8, device=dev),
                                                               0).wait()))
            # per tensor: one broadcast per parameter, straight into the receiver's existing tensors
            res["per_tensor"].append(timed(lambda: [pg.broadcast(x, 0).wait() for x in dst]))
            res["flat"].append(timed(flat_packed))
            for w in wires:
                for b in buckets_mb:
                    res[f"ours {w} {b}MB"].append(timed(lambda: ours(named, b, w)))
                    if ablate:
                        with no_checksums():
                            res[f"ours {w} {b}MB{NO_CK}"].append(timed(lambda: ours(named, b, w)))
        q.put((rank, mb, nbytes, len(named), res))
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
    got = [q.get(timeout=1800) for _ in range(2 * len(sizes))]
    for p in procs:
        p.join()
    results = []  # per size: (mb, bytes, tensors, {key: (wall s, sender CPU s, receiver CPU s)} of the best repeat)
    for mb in sizes:
        side = {rank: res for rank, m, _, _, res in got if m == mb}
        _, _, nbytes, nt, _ = next(g for g in got if g[1] == mb)
        best = {}
        for k in side[0]:
            reps = [(max(w0, w1), c0, c1) for (w0, c0), (w1, c1) in zip(side[0][k], side[1][k])]
            best[k] = min(reps)
        results.append((mb, nbytes, nt, best))
    dev = torch.cuda.get_device_name(0) if a.backend == "nccl" else f"{platform.machine()}, {os.cpu_count()} cores"
    ours_keys = [k for k in results[0][3] if k.startswith("ours")]
    transports = ("per_tensor", "flat", "raw_fresh")  # ways to move the weights (raw fresh: the first flat figure)
    lines = [f"## sync — {time.strftime('%Y-%m-%d %H:%M')} — {a.backend}, {dev}",
             f"best of {a.repeats} (wall = the slower side); GB/s = bytes / wall time. Weight transports: per-tensor = "
             "one broadcast per tensor into the receiver's existing tensors; flat = the tensors packed into one "
             "pre-touched buffer, one broadcast, views on the receiver. References: raw warm = bytes already packed, "
             "one broadcast into a pre-touched buffer (the link's limit); raw fresh = the same into a new buffer. "
             "ratio = our time / the fastest weight transport of the run; vs link = our time / raw warm",
             "| weights | tensors | raw warm GB/s | raw fresh GB/s | per-tensor GB/s | flat GB/s | "
             + " | ".join(f"{k} GB/s | ratio | vs link" for k in ours_keys) + " |",
             "|---|---|---|---|---|---|" + "---|---|---|" * len(ours_keys)]
    for mb, nbytes, nt, r in results:
        gb = nbytes / 1e9
        fastest = min(r[k][0] for k in transports)
        cells = [f"{gb / r[k][0]:.2f}" for k in ("raw_warm", "raw_fresh", "per_tensor", "flat")]
        cells += [f"{gb / r[k][0]:.2f} | {r[k][0] / fastest:.2f}x | {r[k][0] / r['raw_warm'][0]:.2f}x"
                  for k in ours_keys]
        lines.append(f"| {mb} MB | {nt} | " + " | ".join(cells) + " |")
    lines.append("ours / per-tensor: " + "; ".join(
        f"{mb} MB " + ", ".join(f"{k.removeprefix('ours ')} {r[k][0] / r['per_tensor'][0]:.2f}x" for k in ours_keys)
        for mb, _, _, r in results))
    lines.append("CPU s per GB, sender + receiver (all threads; 2 cores = at most 2 CPU s per wall s): " + "; ".join(
        f"{mb} MB " + ", ".join(f"{k.replace('_', ' ')} {r[k][1] / (nb / 1e9):.2f} + "
                                f"{r[k][2] / (nb / 1e9):.2f}" for k in r)
        for mb, nb, _, r in results[-1:]))
    lines.append("ours = plan + checksummed, versioned buckets + receiver verify and unpack (loading into the "
                 "engine's parameters is not timed, for the transports neither); target: ours <= 1.3x the fastest "
                 "weight transport")
    if a.backend == "gloo":
        lines.append("per-byte costs on this machine (one process, 256 MB, GB/s): " + ", ".join(
            f"{k} {v:.2f}" for k, v in breakdown().items()))
    if a.note:
        lines.append(a.note)
    append_results(lines)


if __name__ == "__main__":
    main()
