"""GPU learner benchmark (run where a GPU is available): tokens/s and MFU of one learner step —
forward + backward + AdamW, bf16, gradient checkpointing — for a Qwen3.5-shaped random model of
~0.5-1 B parameters built from our config builder (no download). Records the card.

    python benchmarks/gpu_learner.py [--hidden 1536 --layers 24] [--family qwen3_5] [--batch 4 --seq 2048]
    python benchmarks/gpu_learner.py --device cpu --hidden 128 --layers 2 --seq 256   # CPU smoke run

MFU = 6 x (non-embedding parameters) x tokens/s / peak bf16 FLOP/s of the card (dense). On a GPU
without flash-linear-attention the Qwen3.5 linear-attention layers use transformers' torch fallback;
`--family qwen3_vl` measures a standard-attention model of the same size.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import append_results, stamp  # noqa: E402

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "H20": 148e12, "H800": 989e12, "A100": 312e12, "A800": 312e12,
             "L40S": 362e12, "B200": 2250e12}


def peak_flops(name: str) -> float | None:
    for k, v in PEAK_BF16.items():
        if k in name:
            return v
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", default="qwen3_5", choices=["qwen3_5", "qwen3_vl", "qwen2_5_vl"])
    ap.add_argument("--hidden", type=int, default=1536)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-grad-ckpt", action="store_true")
    ap.add_argument("--dtype", choices=["auto", "bfloat16", "float32"], default="auto",
                    help="auto: bf16 on GPU, fp32 on CPU (CPU bf16 matmuls are ~50x slower without AMX)")
    a = ap.parse_args()
    from transformers import AutoModelForImageTextToText

    from tempsamp.models.tiny import tiny_config

    dev = torch.device(a.device)
    dtype = getattr(torch, a.dtype) if a.dtype != "auto" else (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    cfg = tiny_config(a.family, hidden=a.hidden, layers=a.layers)
    model = AutoModelForImageTextToText.from_config(cfg, dtype=dtype).to(dev)
    if not a.no_grad_ckpt:
        model.gradient_checkpointing_enable()
    model.train()
    n_all = sum(p.numel() for p in model.parameters())
    n_emb = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" in n or "lm_head" in n)
    n_vis = sum(p.numel() for n, p in model.named_parameters() if ".visual." in n or n.startswith("visual."))
    n_dense = n_all - n_emb - n_vis
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6, fused=dev.type == "cuda")
    vocab = cfg.text_config.vocab_size
    g = torch.Generator(device="cpu").manual_seed(0)
    times = []
    for step in range(a.steps):
        ids = torch.randint(0, vocab, (a.batch, a.seq), generator=g).to(dev)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    dt = statistics.median(times[2:] if len(times) > 3 else times)
    tok_s = a.batch * a.seq / dt
    card = torch.cuda.get_device_name(0) if dev.type == "cuda" else "CPU"
    peak = peak_flops(card) if dev.type == "cuda" else None
    mfu = 6 * n_dense * tok_s / peak if peak else None
    mem = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else float("nan")
    append_results([
        stamp("gpu_learner", card),
        f"{a.family} random, hidden {a.hidden}, {a.layers} layers: {n_all / 1e9:.2f} B params "
        f"({n_dense / 1e9:.2f} B non-embedding, non-vision), {str(dtype).replace('torch.', '')}, AdamW, grad ckpt {not a.no_grad_ckpt}",
        f"- batch {a.batch} x {a.seq} tokens: {dt:.3f} s/step (median), {tok_s:,.0f} tokens/s, "
        f"peak memory {mem:.1f} GiB" + (f", MFU {100 * mfu:.1f}% of {peak / 1e12:.0f} TFLOP/s" if mfu else ""),
    ])


if __name__ == "__main__":
    main()
