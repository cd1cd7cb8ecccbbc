"""Shared-prefix learner step vs the unshared one, in one run: step time and peak memory of the real
learner step (`LearnerCore.train_step`: forward + backward + AdamW over one GRPO group) for n responses
of one video prompt, at a TimeLens-like prefix:response ratio (~2,000 : 64 tokens).

    python benchmarks/learner_prefix.py                      # tiny Qwen2.5-VL (fp32, CPU), n = 4 and 8
    python benchmarks/learner_prefix.py --family qwen3_5     # Qwen3.5: only the vision tower is shared
    python benchmarks/learner_prefix.py --device cuda --dtype bfloat16 --hidden 3584 --layers 28

Each (n, shared) configuration runs in its own process (peak memory is then that configuration's own):
1 warm-up step, then the median of `--steps` steps. Peak memory: on CUDA `max_memory_allocated` during the
steps; on CPU the resident-set high-water mark sampled every 2 ms during the steps, minus the resident set
before them (torch keeps no CPU allocator statistics). Target: shared >= 3x faster at n = 8.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import append_results, stamp  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PATCH = {"qwen2_5_vl": 14, "qwen3_vl": 16, "qwen3_5": 16}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Resident-set high-water mark while inside (sampled every 2 ms by a thread)."""

    def __enter__(self):
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss())


def video_sample(family: str, frames: int, rows: int, cols: int):
    """A random video of `frames` frames at (rows x cols) merged tokens per frame group, as the decode
    stage hands it over (already resized: the processor only patchifies)."""
    import numpy as np

    from tempsamp.data.video import VideoMeta, VideoParams, VideoSample

    unit = 2 * PATCH[family]  # merge 2 x patch
    h, w = rows * unit, cols * unit
    rng = np.random.default_rng(0)
    pix = rng.integers(0, 255, size=(frames, h, w, 3), dtype=np.uint8)
    meta = VideoMeta(path="random", source_fps=1.0, total_num_frames=frames, frame_indices=list(range(frames)),
                     sample_fps=1.0, height=h, width=w, source_height=h, source_width=w)
    return VideoSample(frames=pix, meta=meta, params=VideoParams(fps=1.0, max_frames=frames, patch_size=PATCH[family]))


def one(args) -> dict:
    """One configuration in this process: the step's median time and peak memory."""
    import numpy as np
    import torch

    from tempsamp.algo.batch import build_train_batch
    from tempsamp.config import load_config
    from tempsamp.learner.core import LearnerCore
    from tempsamp.models.policy import render_prompt
    from tempsamp.rollout.base import RolloutGroup

    torch.manual_seed(0)
    cfg = load_config(args.config or None, [
        f"model.dtype={args.dtype}", f"learner.shared_prefix={str(args.shared).lower()}",
        f"learner.gradient_checkpointing={str(not args.no_grad_ckpt).lower()}", "learner.lr=1e-5",
        "learner.warmup_ratio=0", f"rollout.n={args.n}", "learner.micro_batch_tokens=65536",
        f"rollout.top_p={args.top_p}"], env={})
    core = LearnerCore(cfg, args.model, total_steps=100, device=args.device)
    core.skip_zero_adv = False  # every row runs (random responses score 0: the timing is of all n rows)
    proc, tok = core.processor, core.processor.tokenizer
    video = video_sample(args.family, args.frames, args.rows, args.cols)
    if args.prompt == "timelens":  # the trainer's prompt: the TimeLens instruction around the query (~85 tokens)
        from tempsamp.data.prompts import build_problem

        prompt = render_prompt(proc, build_problem("the person opens the door"))
    else:
        prompt = render_prompt(proc, "<video>\nWhen does the person open the door? Answer with start and end seconds.")
    rng = np.random.default_rng(0)
    groups = [RolloutGroup(key=0, response_ids=[rng.integers(100, 5000, size=args.response).tolist() for _ in range(args.n)],
                           texts=[""] * args.n, logprobs=[[]] * args.n, weight_version=0)]
    batch = build_train_batch(groups, [(1.0, 2.0)], [prompt], [video], n=args.n, step=1, gt_injection=False,
                              encode=lambda t: tok.encode(t, add_special_tokens=False), eos_id=151645, pad_id=151643)
    videos = {0: video}
    from tempsamp.models.policy import build_inputs

    prefix = build_inputs(proc, prompt, video).length
    dev = torch.device(args.device)
    core.train_step(batch, videos)  # warm-up
    times = []
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as rss:
        for _ in range(args.steps):
            t = time.perf_counter()
            m = core.train_step(batch, videos)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else rss.peak - rss.base
    return {"n": args.n, "shared": args.shared, "step_s": statistics.median(times), "peak_bytes": peak,
            "prefix": prefix, "response": args.response, "micro_batches": m["micro_batches"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", default="qwen2_5_vl", choices=sorted(PATCH))
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--ns", default="4,8")
    ap.add_argument("--frames", type=int, default=16, help="video frames (2 per temporal token group)")
    ap.add_argument("--rows", type=int, default=12, help="merged video tokens per frame group, vertically")
    ap.add_argument("--cols", type=int, default=20, help="... and horizontally (16 x 12 x 20 / 2 = 1,920 tokens)")
    ap.add_argument("--response", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--no-grad-ckpt", action="store_true")
    ap.add_argument("--top-p", type=float, default=0.85,
                    help="rollout.top_p (the recipe's 0.85: the learner also scores each response token under the "
                         "engines' top-p filter, a sort of the vocabulary per token, the same work shared or not)")
    ap.add_argument("--prompt", choices=["short", "timelens"], default="short",
                    help="the text around the video: a one-line question (the runs in RESULTS.md before 2026-11-30) "
                         "or the trainer's TimeLens instruction (`--prompt timelens`, e.g. for the demo's shape: "
                         "--frames 8 --rows 2 --cols 4 --response 24 --ns 4 --no-grad-ckpt --top-p 1.0)")
    ap.add_argument("--config", default="", help="a YAML config whose algorithm/learner/rollout settings the step "
                    "uses (default: the library defaults); the flags above override it")
    ap.add_argument("--model", default="", help="a model folder (default: a random one of --family/--hidden/--layers)")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=8, help=argparse.SUPPRESS)
    ap.add_argument("--shared", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-append", action="store_true", help="print only (smoke runs)")
    a = ap.parse_args()
    if a.one:
        print("RESULT " + json.dumps(one(a)))
        return
    if not a.model:
        from tempsamp.models.tiny import build_tiny_model

        work = Path(tempfile.mkdtemp(prefix="tempsamp-bench-prefix-"))
        a.model = str(build_tiny_model(work / a.family, a.family, hidden=a.hidden, layers=a.layers, dtype=a.dtype))
    res = {}
    for n in [int(x) for x in a.ns.split(",")]:
        for shared in (False, True):
            cmd = [sys.executable, __file__, "--one", "--n", str(n), "--model", a.model, "--family", a.family,
                   "--frames", str(a.frames), "--rows", str(a.rows), "--cols", str(a.cols), "--response",
                   str(a.response), "--steps", str(a.steps), "--device", a.device, "--dtype", a.dtype,
                   "--top-p", str(a.top_p), "--prompt", a.prompt, "--config", a.config]
            cmd += ["--shared"] if shared else []
            cmd += ["--no-grad-ckpt"] if a.no_grad_ckpt else []
            env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
            if out.returncode or not line:
                sys.exit(f"configuration n={n} shared={shared} failed:\n{out.stderr[-3000:]}")
            res[n, shared] = json.loads(line[-1][len("RESULT "):])
            print(res[n, shared], flush=True)
    any_r = next(iter(res.values()))
    mode = "whole prefix packed once" if a.family != "qwen3_5" else "vision tower once (linear attention: no packing)"
    lines = [stamp("learner_prefix", f"{a.device}, {a.dtype}"),
             f"{a.family} random, hidden {a.hidden}, {a.layers} layers; one group: prefix {any_r['prefix']} tokens "
             f"(video {a.frames} frames) : response {a.response} tokens; LearnerCore.train_step (fwd + bwd + AdamW), "
             f"grad ckpt {not a.no_grad_ckpt}, rollout.top_p {a.top_p}, {a.prompt} prompt, "
             f"config {a.config or 'defaults'}; median of {a.steps} steps after 1 warm-up; "
             f"shared = {mode}",
             "| n | unshared s/step | shared s/step | speed-up | unshared peak MiB | shared peak MiB | memory ratio |",
             "|---|---|---|---|---|---|---|"]
    for n in [int(x) for x in a.ns.split(",")]:
        u, s = res[n, False], res[n, True]
        lines.append(f"| {n} | {u['step_s']:.2f} | {s['step_s']:.2f} | {u['step_s'] / s['step_s']:.2f}x | "
                     f"{u['peak_bytes'] / 2**20:.0f} | {s['peak_bytes'] / 2**20:.0f} | "
                     f"{u['peak_bytes'] / max(s['peak_bytes'], 1):.2f}x |")
    lines.append("peak memory: " + ("torch.cuda.max_memory_allocated" if a.device.startswith("cuda") else
                                    "resident-set high-water mark during the steps minus before them")
                 + "; target: shared >= 3x faster at n = 8")
    if a.no_append:
        print("\n".join(lines))
    else:
        append_results(lines)


if __name__ == "__main__":
    main()
