"""Pipeline benchmark: step time with trainer.max_staleness 1 (rollout of step k+1 overlaps learning of
step k) vs 0 (the original's schedule) vs the slowest stage alone, on the demo workload (tiny
Qwen2.5-VL, HF rollout, local Ray). Appends to RESULTS.md.

    python benchmarks/pipeline.py [--steps 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import append_results, demo_inputs, run_trainer, stamp, workdir  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    a = ap.parse_args()
    from tempsamp.cluster import init_ray

    work = workdir("pipeline")
    train, model = demo_inputs(work)
    init_ray(num_cpus=2)
    rows = {s: run_trainer(work, train, model, f"stale{s}", a.steps, f"trainer.max_staleness={s}")[2:]
            for s in (0, 1)}  # the first two steps warm up (model load, first sync)
    step = {s: statistics.mean(r["time/step"] for r in rows[s]) for s in rows}
    roll = statistics.mean(r["time/decode"] + r["time/rollout"] + r["time/reward"] for r in rows[0])
    learn = statistics.mean(r["time/learn"] + r["time/sync"] for r in rows[0])
    slowest = max(roll, learn)
    append_results([
        stamp("pipeline", f"{a.steps} steps, first 2 dropped"),
        f"- stages at staleness 0: decode+rollout+reward {roll:.2f} s, learn+sync {learn:.2f} s -> slowest {slowest:.2f} s",
        f"- step time, max_staleness 0: {step[0]:.2f} s  ({step[0] / slowest:.2f}x slowest stage)",
        f"- step time, max_staleness 1: {step[1]:.2f} s  ({step[1] / slowest:.2f}x slowest stage; "
        f"{step[0] / step[1]:.2f}x faster than staleness 0)  target <= 1.15x",
    ])


if __name__ == "__main__":
    main()
