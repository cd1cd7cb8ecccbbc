"""Seeded ablation of TempSamp-R1's components (issue #21), in-process on the reward-stage and learner
cores (the recipe check's loop: HF generation on the learner's own model, no Ray), the demo config's
workload (tiny random Qwen2.5-VL, synthetic grounding videos, 4 prompts x 4 responses per step).

Arms: grpo, grpo+shaping, grpo+gt, tempsamp, grpo+filter (dynamic sampling); S seeds each; two starts:
`random` (the random tiny model) and `warm` (that model after a short TempSamp phase, made once, shared by
every arm). Each run's final model is evaluated greedily on the synthetic TimeLens-Bench folder.
Finished runs are kept under --out and skipped on a rerun (an interrupted ablation resumes).

    python benchmarks/ablation.py [--seeds 3] [--steps-random 15] [--steps-warm 12] [--warm-steps 60] [--warm-lr 3e-4]
                                  [--arms grpo,tempsamp] [--starts random,warm] [--out outputs/ablation]

Writes <out>/ablation.json (every figure), <out>/ablation.png (mean curves, ±1 std bands over seeds),
and appends the table to benchmarks/RESULTS.md (--no-results: print only).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, append_results, stamp  # noqa: E402

from tempsamp.ablation import ARMS, STARTS, FORMAT_KEY, IOU_KEY, SCORE_KEY, ZERO_KEY, aggregate, markdown_table, \
    run_ablation  # noqa: E402

PANELS = [(FORMAT_KEY, "on-policy format rate"), (IOU_KEY, "on-policy IoU"),
          (SCORE_KEY, "score (IoU + 0.1 format)"), (ZERO_KEY, "zero-advantage groups")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "outputs" / "ablation"))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--starts", default=",".join(STARTS))
    ap.add_argument("--steps-random", type=int, default=15)
    ap.add_argument("--steps-warm", type=int, default=12)
    ap.add_argument("--warm-steps", type=int, default=60, help="TempSamp steps that make the warm start")
    ap.add_argument("--override", action="append", default=[], help="extra config override for every run")
    # from the warm start the demo's lr (3e-3, a fresh cosine) undoes the format the warm phase learned within
    # 12 steps in every arm (measured: format 0.58 -> 0.01-0.16, greedy eval 0); 10x lower continues it
    ap.add_argument("--warm-lr", type=float, default=3e-4, help="learner.lr of the runs from the warm start")
    ap.add_argument("--fresh", action="store_true", help="delete --out first (no resume)")
    ap.add_argument("--no-results", action="store_true", help="do not append to benchmarks/RESULTS.md")
    a = ap.parse_args(argv)
    arms, starts = a.arms.split(","), a.starts.split(",")
    steps = {"random": a.steps_random, "warm": a.steps_warm}
    out = Path(a.out)
    if a.fresh:
        shutil.rmtree(out, ignore_errors=True)
    t0 = time.time()
    results = run_ablation(out, arms, starts, a.seeds, steps, a.warm_steps, overrides=a.override,
                           start_overrides={"warm": [f"learner.lr={a.warm_lr}"]})
    seconds = time.time() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    cpu_min = (ru.ru_utime + ru.ru_stime) / 60
    agg = {start: {arm: aggregate([r["summary"] for r in recs]) for arm, recs in by_arm.items()}
           for start, by_arm in results.items()}
    from tempsamp.plots import seed_band_curves

    png = seed_band_curves({start: {arm: [r["rows"] for r in recs] for arm, recs in by_arm.items()}
                            for start, by_arm in results.items()}, PANELS, out / "ablation.png",
                           title=f"ablation: mean over {a.seeds} seeds, ±1 std (5-step trailing mean)")
    warm = json.loads((out / "warm_start.json").read_text()) if (out / "warm_start.json").exists() else None
    (out / "ablation.json").write_text(json.dumps(
        {"aggregate": agg, "steps": steps, "warm_steps": a.warm_steps, "seeds": a.seeds, "warm_start": warm,
         "runs": {s: {arm: [r["summary"] for r in recs] for arm, recs in by.items()} for s, by in results.items()}},
        indent=1))
    lines = [stamp("Ablation (benchmarks/ablation.py)", f"{a.seeds} seeds, in-process, {seconds / 60:.1f} min wall, "
                   f"{cpu_min:.1f} min CPU"
                   + (" (resumed: earlier runs reused)" if seconds < 60 else "")), ""]
    if warm:
        ws, we = warm["summary"], warm["eval"]["all"]
        lines += [f"Warm start: {a.warm_steps} TempSamp steps from the random model (seed 1000): format rate over "
                  f"its last 10 steps {ws['format_last']:.2f}, IoU {ws['iou_last']:.3f}; its eval R1@0.5 "
                  f"{we['R1@0.5']:.1f}, mIoU {we['mIoU']:.1f}, parse {we['parse_rate']:.0f} %.", ""]
    from tempsamp.ablation import span_baselines
    from tempsamp.config import DEMO_CONFIG, load_config

    base = span_baselines(out / "data" / "bench", list(load_config(DEMO_CONFIG, [], env={}).eval.datasets))
    lines += [f"Runs from the warm start use learner.lr {a.warm_lr:g} (the demo's 3e-3 otherwise).", "",
              markdown_table(agg, steps),
              "Answers that ignore the video, on the same bench: " + "; ".join(
                  f"{k}: R1@0.5 {v['R1@0.5']:.1f}, mIoU {v['mIoU']:.1f}" for k, v in base.items()) + ".", "",
              f"Curves: `{png}` (copy: benchmarks/ablation.png).", ""]
    if a.no_results:
        print("\n".join(lines))
    else:
        shutil.copyfile(png, Path(__file__).with_name("ablation.png"))
        append_results(lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
