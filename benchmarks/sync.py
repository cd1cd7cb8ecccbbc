"""Weight-sync benchmark: our bucketed, checksummed broadcast (tempsamp.sync.weights: pack -> broadcast
buckets -> verify -> unpack) vs one raw broadcast of a flat buffer of the same bytes (the link's
physical limit) vs one broadcast per tensor, for model-shaped tensor sets of 50 MB - 1 GB.
Sender and receiver are two processes joined by gloo on loopback (NCCL on a GPU machine:
`--backend nccl`). Prints GB/s and ratios measured in the same run; appends to RESULTS.md.

    python benchmarks/sync.py [--sizes-mb 50,200,1000] [--bucket-mb 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp


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


def _worker(rank: int, port: int, sizes: list[int], bucket_mb: int, repeats: int, backend: str, q) -> None:
    import msgspec

    from tempsamp.sync.weights import SyncPlan, make_group, plan_buckets, receive_plan, send_streaming

    dev = torch.device(f"cuda:{rank}") if backend == "nccl" else torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(dev)
    pg, _store = make_group("127.0.0.1", port, rank, 2, backend, 600.0, device=dev if backend == "nccl" else None)

    def barrier():
        pg.broadcast(torch.zeros(1, device=dev), 0).wait()
        if backend == "nccl":
            torch.cuda.synchronize()

    for mb in sizes:
        named = [(n, t.to(dev)) for n, t in model_like(mb)]
        nbytes = sum(t.numel() * t.element_size() for _, t in named)
        res = {"raw": [], "bucketed": [], "per_tensor": []}
        for _ in range(repeats):
            # raw: one flat buffer already packed (the physical limit of the link)
            flat = torch.empty(nbytes, dtype=torch.uint8, device=dev)
            barrier()
            t = time.perf_counter()
            pg.broadcast(flat, 0).wait()
            if backend == "nccl":
                torch.cuda.synchronize()
            res["raw"].append(time.perf_counter() - t)
            del flat
            # ours, end to end: plan (rank 0) -> pack + checksum each bucket while the previous ones travel ->
            # receiver verifies + unpacks each while the next ones arrive
            barrier()
            t = time.perf_counter()
            if rank == 0:
                plan, groups = plan_buckets(named, bucket_mb << 20, version=1)
                obj = [plan]
            else:
                obj = [None]
            # the plan travels through Ray in the trainer; here as JSON through the same group (small)
            payload = torch.frombuffer(bytearray(msgspec.json.encode(obj[0])), dtype=torch.uint8) if rank == 0 else None
            size = torch.tensor([payload.numel() if rank == 0 else 0], dtype=torch.int64, device=dev)
            pg.broadcast(size, 0).wait()
            pbuf = payload.to(dev) if rank == 0 else torch.empty(int(size.item()), dtype=torch.uint8, device=dev)
            pg.broadcast(pbuf, 0).wait()
            if rank == 0:
                send_streaming(pg, plan, groups)
            else:
                plan = msgspec.json.decode(pbuf.cpu().numpy().tobytes(), type=SyncPlan)
                n = sum(len(part) for part in receive_plan(pg, plan, device=dev))
                assert n == len(named)
            if backend == "nccl":
                torch.cuda.synchronize()
            res["bucketed"].append(time.perf_counter() - t)
            # per tensor: one broadcast per parameter
            recv = [torch.empty_like(x) for _, x in named] if rank else [x for _, x in named]
            barrier()
            t = time.perf_counter()
            for x in recv:
                pg.broadcast(x, 0).wait()
            if backend == "nccl":
                torch.cuda.synchronize()
            res["per_tensor"].append(time.perf_counter() - t)
            del recv
        if rank == 1:
            q.put((mb, nbytes, len(named), {k: min(v) for k, v in res.items()}))
        del named


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes-mb", default="50,200,1000")
    ap.add_argument("--bucket-mb", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backend", choices=["gloo", "nccl"], default="gloo")
    a = ap.parse_args()
    sizes = [int(x) for x in a.sizes_mb.split(",")]
    from tempsamp.sync.weights import free_port

    port = free_port()
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, port, sizes, a.bucket_mb, a.repeats, a.backend, q))
             for r in range(2)]
    for p in procs:
        p.start()
    results = [q.get(timeout=1800) for _ in sizes]
    for p in procs:
        p.join()
    dev = torch.cuda.get_device_name(0) if a.backend == "nccl" else f"{platform.machine()}, {os.cpu_count()} cores"
    lines = [f"## sync — {time.strftime('%Y-%m-%d %H:%M')} — {a.backend}, {dev}",
             f"bucket {a.bucket_mb} MB, best of {a.repeats}; GB/s = bytes / wall time; ratio = time / raw broadcast",
             "| weights | tensors | raw GB/s | bucketed GB/s | bucketed / raw | per-tensor GB/s | per-tensor / raw |",
             "|---|---|---|---|---|---|---|"]
    for mb, nbytes, nt, r in results:
        gb = nbytes / 1e9
        lines.append(f"| {mb} MB | {nt} | {gb / r['raw']:.2f} | {gb / r['bucketed']:.2f} | "
                     f"{r['bucketed'] / r['raw']:.2f}x | {gb / r['per_tensor']:.2f} | {r['per_tensor'] / r['raw']:.2f}x |")
    lines.append("target: bucketed <= 1.3x raw (includes packing, checksums, unpacking; streamed checksums)")
    lines.append("")
    print("\n".join(lines))
    with open(Path(__file__).with_name("RESULTS.md"), "a") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
