"""Memory-plan validation: the learner estimate of tempsamp/placement/memory.py vs the measured peak of
a learner step (forward + backward + AdamW step of one micro-batch: a video prompt + n responses) of
tiny random models on CPU, float32, one rank, for gradient checkpointing on and off.

Measured: each case runs in a fresh process with glibc told to return freed memory at once
(MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_), so RSS follows the live tensors. The step measured is
the second (AdamW state exists, lazy initialisation done, as in a running job): its peak is VmHWM after
the step (reset through /proc/self/clear_refs before it) minus the RSS before it; measured total = that +
the parameter and AdamW-state bytes. Estimated: `learner_memory` for the model's config.json with the same
prompt/video/response token counts, one rank, no runtime reserve (CPU). Error = estimate / measured - 1,
for the total and for what the step adds on top of parameters and AdamW state (gradients, activations,
logits, the vision tower's transient: the part the formulas model).

    python benchmarks/memory_plan.py [--families qwen2_5_vl,qwen3_vl,qwen3_5] [--hidden 128 --layers 8]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024


def worker(model_dir: str, video: str, frames: int, pixels: int, n: int, response: int, ckpt: bool) -> dict:
    import torch

    from tempsamp.data.video import VideoParams, decode_video
    from tempsamp.models.loading import load_model, load_processor
    from tempsamp.models.policy import build_inputs, render_prompt, response_scores

    torch.manual_seed(0)
    family = json.loads((Path(model_dir) / "tempsamp_tiny.json").read_text())["family"]
    patch = 14 if family == "qwen2_5_vl" else 16
    vid = decode_video(video, VideoParams(fps=8.0, min_frames=frames, max_frames=frames, min_pixels=pixels,
                                          max_pixels=pixels, patch_size=patch))
    proc = load_processor(model_dir)
    inputs = build_inputs(proc, render_prompt(proc, "<video>\nWhen does the red square move?"), vid)
    grid = inputs.visual["video_grid_thw"]
    video_tokens = int(grid.prod(-1).sum()) // 4
    model = load_model(model_dir, dtype="float32")
    if ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    for p in model.model.visual.parameters():  # frozen tower, as learner.freeze_vision_tower
        p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-6)
    ids = torch.randint(0, 150000, (n, response))
    mask = torch.ones(n, response, dtype=torch.long)
    import gc

    def step():
        opt.zero_grad(set_to_none=True)
        lp = response_scores(model, inputs, ids, mask).logprobs
        (-lp.sum() / mask.sum()).backward()
        opt.step()

    step()  # warm-up: AdamW state exists and every lazy initialisation is done, as in a running job
    opt.zero_grad(set_to_none=True)
    gc.collect()
    resident = sum(p.numel() * p.element_size() for p in model.parameters())
    resident += sum(v.numel() * v.element_size() for st in opt.state.values() for v in st.values()
                    if torch.is_tensor(v) and v.dim())
    rss0 = _kib("VmRSS")
    open("/proc/self/clear_refs", "w").write("5")
    t = time.perf_counter()
    step()
    seconds = time.perf_counter() - t
    peak = _kib("VmHWM") - rss0
    return {"prompt_tokens": inputs.length, "video_tokens": video_tokens, "resident_bytes": resident,
            "step_bytes": peak, "measured": resident + peak, "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--families", default="qwen2_5_vl,qwen3_vl,qwen3_5")
    ap.add_argument("--hidden", type=int, default=128, help="128 for qwen2_5_vl: tiny_config's M-RoPE sections fix its head dim at 32")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--pixels", type=int, default=150528, help="pixels per frame (16 x 448 x 336 -> ~1,500 tokens)")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--response", type=int, default=64)
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        model_dir, video, ckpt = a.worker.split("|")
        print("RESULT " + json.dumps(worker(model_dir, video, a.frames, a.pixels, a.n, a.response, ckpt == "1")))
        return

    from _common import append_results, machine, workdir

    from tempsamp.data.records import read_records
    from tempsamp.data.synthetic import generate
    from tempsamp.models.tiny import build_tiny_model
    from tempsamp.placement.memory import learner_memory, model_shape

    work = workdir("memory")
    video = read_records(generate(work / "data", n_train=1, n_bench=1, seed=0)["train_jsonl"])[0][0].video
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0",
           "MALLOC_ARENA_MAX": "1", "PYTHONPATH": str(ROOT)}
    rows = []
    for fam in a.families.split(","):
        mdir = build_tiny_model(work / fam, fam, hidden=a.hidden, layers=a.layers, dtype="float32")
        shape = model_shape(mdir / "config.json")
        for ckpt in (True, False):
            out = subprocess.run([sys.executable, __file__, "--worker", f"{mdir}|{video}|{int(ckpt)}",
                                  "--frames", str(a.frames), "--pixels", str(a.pixels), "--n", str(a.n),
                                  "--response", str(a.response)], env=env, capture_output=True, text=True, timeout=1800)
            line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                raise SystemExit(f"{fam} ckpt={ckpt}: worker failed:\n{out.stderr[-3000:]}")
            m = json.loads(line[len("RESULT "):])
            P = m["prompt_tokens"]
            est = learner_memory(shape, dtype_bytes=4, ranks=1, fsdp=False, micro_batch_tokens=a.n * (P + a.response),
                                 prompt_tokens=P, response_tokens=a.response, n=a.n, gradient_checkpointing=ckpt,
                                 shared_prefix=False, freeze_vision=True, use_kl=False,
                                 video_tokens=m["video_tokens"], reserve_gib=0)
            est_step = est.total - est.parts["parameters"] - est.parts["AdamW state"]
            rows.append((fam, ckpt, m, est, est_step))
            print(fam, "ckpt" if ckpt else "no-ckpt", {k: round(v / 2**20, 1) for k, v in est.parts.items()},
                  f"measured {m['measured'] / 2**20:.1f} MiB (step {m['step_bytes'] / 2**20:.1f})", flush=True)
    lines = [f"## memory_plan — {time.strftime('%Y-%m-%d %H:%M')} — {machine()}",
             f"learner step of tiny models (hidden {a.hidden}, {a.layers} layers, vocab 151,936, float32, frozen "
             f"vision tower), {a.n} responses x {a.response} tokens after a video prompt, one rank; "
             "measured = parameters + AdamW state + the peak RSS a (second) step adds; error = estimate / measured - 1",
             "| family | grad ckpt | prompt (video) tokens | measured MiB | estimated MiB | error | "
             "measured step MiB (above params + AdamW) | estimated step MiB | error |",
             "|---|---|---|---|---|---|---|---|---|"]
    for fam, ckpt, m, est, est_step in rows:
        lines.append(f"| {fam} | {'on' if ckpt else 'off'} | {m['prompt_tokens']} ({m['video_tokens']}) | "
                     f"{m['measured'] / 2**20:.0f} | {est.total / 2**20:.0f} | {est.total / m['measured'] - 1:+.0%} | "
                     f"{m['step_bytes'] / 2**20:.0f} | {est_step / 2**20:.0f} | {est_step / m['step_bytes'] - 1:+.0%} |")
    append_results(lines)


if __name__ == "__main__":
    main()
