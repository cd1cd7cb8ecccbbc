"""GPU learner benchmark (run where a GPU is available): tokens/s and MFU of one learner step —
forward + backward + AdamW, bf16, gradient checkpointing — for a Qwen3.5-shaped random model of
~0.5-1 B parameters built from our config builder (no download). Records the card.

    python benchmarks/gpu_learner.py [--hidden 1536 --layers 24] [--family qwen3_5] [--batch 4 --seq 2048]
    python benchmarks/gpu_learner.py --device cpu --hidden 128 --layers 2 --seq 256   # CPU smoke run

MFU = 6 x (non-embedding parameters) x tokens/s / peak bf16 FLOP/s of the card (dense). On a GPU
without flash-linear-attention the Qwen3.5 linear-attention layers use transformers' torch fallback;
`--family qwen3_vl` measures a standard-attention model of the same size.

Shared-prefix comparison (after the plain step; `--no-prefix-compare` skips it): one GRPO group — a
video prompt of ~`--prefix` tokens and `--n` responses of `--response` tokens — scored and trained
(forward + backward + AdamW) with the unshared forward (the video and prompt once per response) and
with the shared-prefix forward (models/shared_prefix.py), in the same run; s/step, useful tokens/s
(n x (prefix + response), what both compute), MFU on those tokens, peak memory, and the speed-up.
`--preset qwen2_5_vl_7b` builds the real Qwen2.5-VL-7B shape (28 layers, hidden 3584, GQA 28/4 heads,
vision tower 32 x 1280) with random weights:

    python benchmarks/gpu_learner.py --preset qwen2_5_vl_7b --family qwen2_5_vl --steps 0 --prefix 8000 --n 8
    python benchmarks/gpu_learner.py --device cpu --family qwen2_5_vl --hidden 128 --layers 2 --seq 256 \
        --prefix 600 --response 32 --n 4 --prefix-steps 2                          # CPU smoke run

Needs only torch + transformers (no vLLM, Ray, msgspec or tokenizer package): the prompt is built from
token ids, the video from random pixels.
"""

from __future__ import annotations

import argparse
import math
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


def preset_config(name: str):
    """Architecture-only config of a released model (random weights; no download)."""
    from tempsamp.models.tiny import TOKENS, VOCAB_SIZE

    if name == "qwen2_5_vl_7b":  # Qwen/Qwen2.5-VL-7B-Instruct config.json
        from transformers import Qwen2_5_VLConfig

        return Qwen2_5_VLConfig(
            text_config=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                             num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000,
                             rms_norm_eps=1e-6, tie_word_embeddings=False,
                             rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
                             eos_token_id=TOKENS["eos"], pad_token_id=TOKENS["pad"], bos_token_id=TOKENS["pad"]),
            vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                               patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                               fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2),
            tie_word_embeddings=False, image_token_id=TOKENS["image"], video_token_id=TOKENS["video"],
            vision_start_token_id=TOKENS["vision_start"], vision_end_token_id=TOKENS["vision_end"],
        )
    raise SystemExit(f"unknown --preset {name!r}; known: qwen2_5_vl_7b")


def group_inputs(family: str, cfg, prefix: int, vocab: int, g: torch.Generator):
    """A video prompt of about `prefix` tokens as the processor lays it out, from ids and random pixels:
    Qwen2.5-VL one video block; Qwen3-VL / Qwen3.5 one block per frame group after a timestamp."""
    from tempsamp.models.policy import PromptInputs
    from tempsamp.models.tiny import TOKENS

    vc = cfg.vision_config
    merge, patch, tps = vc.spatial_merge_size, vc.patch_size, vc.temporal_patch_size
    t = 8  # frame groups (16 frames); about square frames of hm x wm merged tokens
    target = max(1, (prefix - 40 - 6 * t) // t)
    hm = max(1, int(math.sqrt(target)))
    wm = max(1, target // hm)
    h, w, per_group = hm * merge, wm * merge, hm * wm  # grid rows / cols in patches
    text = lambda k: torch.randint(1000, 100000, (k,), generator=g).tolist()
    ids, types = text(20), [0] * 20
    if family == "qwen2_5_vl":
        ids += [TOKENS["vision_start"]] + [TOKENS["video"]] * (t * per_group) + [TOKENS["vision_end"]]
        types += [0] + [2] * (t * per_group) + [0]
    else:
        for _ in range(t):
            ids += text(3) + [TOKENS["vision_start"]] + [TOKENS["video"]] * per_group + [TOKENS["vision_end"]]
            types += [0] * 4 + [2] * per_group + [0]
    ids += text(20)
    types += [0] * 20
    pixels = torch.randn(t * h * w, 3 * tps * patch * patch, generator=g)
    visual = {"pixel_values_videos": pixels, "video_grid_thw": torch.tensor([[t, h, w]])}
    if family == "qwen2_5_vl":
        visual["second_per_grid_ts"] = torch.tensor([2.0])
    return PromptInputs(input_ids=torch.tensor([ids]), visual=visual,
                        mm_token_type_ids=torch.tensor([types], dtype=torch.int32))


def prefix_compare(model, cfg, a, dev, n_dense: int, card: str, peak) -> list[str]:
    """The shared-prefix comparison: one group, unshared vs shared, fwd + bwd + AdamW per step."""
    from tempsamp.models.mrope import install
    from tempsamp.models.policy import response_scores
    from tempsamp.models.shared_prefix import shared_mode

    install(model)  # our Qwen2.5-VL video positions, as the learner loads models
    g = torch.Generator(device="cpu").manual_seed(1)
    vocab = cfg.text_config.vocab_size
    inputs = group_inputs(a.family, cfg, a.prefix, vocab, g)
    P = inputs.length
    ids = torch.randint(1000, 100000, (a.n, a.response), generator=g)
    mask = torch.ones_like(ids)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6, fused=dev.type == "cuda")
    out = {}
    for shared in (False, True):
        times = []
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        for step in range(a.prefix_steps + 1):  # + 1 warm-up
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            lp = response_scores(model, inputs, ids, mask, 1.0, False, shared_prefix=shared).logprobs
            (-(lp.sum()) / mask.sum()).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if step:
                times.append(time.perf_counter() - t)
        mem = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else float("nan")
        out[shared] = (statistics.median(times), mem)
    useful = a.n * (P + a.response)
    lines = [f"shared-prefix comparison ({shared_mode(model)}): one group, prompt {P} tokens (video + text) : "
             f"n = {a.n} responses x {a.response} tokens; fwd + bwd + AdamW; useful tokens = n x (prompt + response)"
             f" = {useful:,}; median of {a.prefix_steps} steps after 1 warm-up"]
    for shared in (False, True):
        dt, mem = out[shared]
        tok_s = useful / dt
        mfu = 6 * n_dense * tok_s / peak if peak else None
        lines.append(f"- {'shared  ' if shared else 'unshared'}: {dt:.3f} s/step, {tok_s:,.0f} useful tokens/s, "
                     f"peak memory {mem:.1f} GiB" + (f", MFU {100 * mfu:.1f}% (useful tokens)" if mfu else ""))
    lines.append(f"- speed-up shared / unshared: {out[False][0] / out[True][0]:.2f}x")
    return lines


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
    ap.add_argument("--preset", default="", help="qwen2_5_vl_7b: the released model's shape (random weights)")
    ap.add_argument("--no-prefix-compare", action="store_true", help="skip the shared-prefix comparison")
    ap.add_argument("--prefix", type=int, default=2000, help="prompt tokens of the comparison's group (~)")
    ap.add_argument("--response", type=int, default=64)
    ap.add_argument("--n", type=int, default=8, help="responses per group")
    ap.add_argument("--prefix-steps", type=int, default=4)
    ap.add_argument("--dtype", choices=["auto", "bfloat16", "float32"], default="auto",
                    help="auto: bf16 on GPU, fp32 on CPU (CPU bf16 matmuls are ~50x slower without AMX)")
    a = ap.parse_args()
    from transformers import AutoModelForImageTextToText

    from tempsamp.models.tiny import tiny_config

    dev = torch.device(a.device)
    dtype = getattr(torch, a.dtype) if a.dtype != "auto" else (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    cfg = preset_config(a.preset) if a.preset else tiny_config(a.family, hidden=a.hidden, layers=a.layers)
    if a.preset:
        a.hidden, a.layers = cfg.text_config.hidden_size, cfg.text_config.num_hidden_layers
    model = AutoModelForImageTextToText.from_config(cfg, dtype=dtype).to(dev)
    if not a.no_grad_ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
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
    card = torch.cuda.get_device_name(0) if dev.type == "cuda" else "CPU"
    peak = peak_flops(card) if dev.type == "cuda" else None
    lines = [stamp("gpu_learner", card),
             f"{a.family}{' (' + a.preset + ' shape)' if a.preset else ''} random, hidden {a.hidden}, {a.layers} layers: "
             f"{n_all / 1e9:.2f} B params ({n_dense / 1e9:.2f} B non-embedding, non-vision), "
             f"{str(dtype).replace('torch.', '')}, AdamW, grad ckpt {not a.no_grad_ckpt}"]
    if times:
        dt = statistics.median(times[2:] if len(times) > 3 else times)
        tok_s = a.batch * a.seq / dt
        mfu = 6 * n_dense * tok_s / peak if peak else None
        mem = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else float("nan")
        lines.append(f"- batch {a.batch} x {a.seq} tokens: {dt:.3f} s/step (median), {tok_s:,.0f} tokens/s, "
                     f"peak memory {mem:.1f} GiB" + (f", MFU {100 * mfu:.1f}% of {peak / 1e12:.0f} TFLOP/s" if mfu else ""))
    del opt
    if not a.no_prefix_compare:
        lines += prefix_compare(model, cfg, a, dev, n_dense, card, peak)
    append_results(lines)


if __name__ == "__main__":
    main()
