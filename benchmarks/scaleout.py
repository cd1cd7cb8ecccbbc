"""Scale-out benchmark: samples/s on the demo workload with 1, 2, 4 decode actors and 1, 2 rollout
engines (HF rollout, local Ray). On a 2-core machine the stages share the same two cores, so this
mostly shows scheduling overhead; on a GPU node each engine has its own GPU. Appends to RESULTS.md.

    python benchmarks/scaleout.py [--steps 3]
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
    ap.add_argument("--steps", type=int, default=3)
    a = ap.parse_args()
    from tempsamp.cluster import init_ray

    work = workdir("scaleout")
    train, model = demo_inputs(work)
    init_ray(num_cpus=2)
    lines = [stamp("scaleout", f"{a.steps} steps per config, first dropped"),
             "| decode actors | rollout engines | samples/s | decode s/step | rollout s/step |", "|---|---|---|---|---|"]
    base = None
    for dec, eng in ((1, 1), (2, 1), (4, 1), (1, 2), (2, 2)):
        rows = run_trainer(work, train, model, f"d{dec}e{eng}", a.steps, f"placement.decode_actors={dec}",
                           f"rollout.num_engines={eng}", "placement.cpus_per_decode_actor=0.1",
                           "placement.cpus_per_gpu_actor=0.4", "placement.cpus_per_reward_actor=0.1",
                           "data.prompts_per_step=4")[1:]
        sps = statistics.mean(r["throughput/samples_per_s"] for r in rows)
        base = base or sps
        lines.append(f"| {dec} | {eng} | {sps:.2f} ({sps / base:.2f}x) | "
                     f"{statistics.mean(r['time/decode'] for r in rows):.2f} | "
                     f"{statistics.mean(r['time/rollout'] for r in rows):.2f} |")
    append_results(lines)


if __name__ == "__main__":
    main()
