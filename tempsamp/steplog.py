"""What a training step reports: the metrics row (steps.jsonl and, when Ray's metrics agent is there,
the dashboard) and the console line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


class StepLogger:
    """Appends one JSON row per step (and per validation) to `<log_dir>/<run_name>/steps.jsonl`,
    flushed at once, and mirrors it to the Ray dashboard when metrics are available."""

    def __init__(self, cfg):
        self.dir = Path(cfg.trainer.log_dir) / cfg.trainer.run_name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "steps.jsonl"
        self.f = open(self.path, "a")
        self.metrics = None
        try:
            from .observe import DashboardMetrics

            self.metrics = DashboardMetrics(cfg.trainer.run_name)
        except Exception as e:  # dashboard metrics are optional (no Ray metrics agent)
            log.warning("dashboard metrics disabled (steps.jsonl still written): %s", e)

    def write(self, row: dict) -> None:
        self.f.write(json.dumps(row) + "\n")
        self.f.flush()
        if self.metrics is not None:
            self.metrics.record(row)

    def close(self):
        self.f.close()


def step_row(step: int, epoch: int, version: int, indices: list[int], lag: int, batch: dict, learn: dict,
             sync: dict, stages: dict, step_s: float, learn_s: float, faults: dict, extra: dict) -> dict:
    """The metrics row of one finished step."""
    return {"step": step, "epoch": epoch, "version": version, "batch/indices": indices,
            "rollout/weight_version_lag": lag,
            **batch,
            **{f"learn/{k}": v for k, v in learn.items()}, **sync,
            **{f"time/{k}": v for k, v in stages.items()}, "time/step": step_s,
            "throughput/samples_per_s": batch["batch/rows"] / max(1e-9, step_s),
            "throughput/tokens_per_s": batch["batch/tokens"] / max(1e-9, learn_s),
            **faults, **extra}


def console_line(run: str, total_steps: int, row: dict) -> str:
    gt_logp = row["learn/gt_logp_per_token"]
    return (f"[{run}] step {row['step']}/{total_steps} "
            f"score {row['reward/raw_score_mean_no_gt']:.3f} (shaped {row['reward/score_mean_no_gt']:.3f}, "
            f"w/ GT {row['reward/score_mean']:.3f}) "
            f"iou {row['reward/iou_mean_no_gt']:.3f} fmt {row['reward/format_rate_no_gt']:.2f} "
            + (f"gt_logp {gt_logp:.2f} " if gt_logp == gt_logp else "")
            + f"| {row['time/step']:.1f}s")


def stage_shares(seconds: dict) -> dict:
    total = sum(seconds.values()) or 1.0
    return {k: v / total for k, v in seconds.items()}
