"""What a training step reports: the metrics row — to the trackers of `trainer.loggers` (steps.jsonl,
TensorBoard, wandb, MLflow; tempsamp/trackers.py) and, when Ray's metrics agent is there, the
dashboard — the console line, and the steps progress bar."""

from __future__ import annotations

import logging

from .progress import progress_bar
from .trackers import Trackers, run_params

log = logging.getLogger(__name__)


class StepLogger:
    """Sends each row (one per step, one per validation) to every tracker of `trainer.loggers`, prints a
    step's console line (`console`), and mirrors rows to the Ray dashboard when metrics are available.
    With `total_steps`, a progress bar over the steps (only on a terminal, see tempsamp/progress.py)."""

    def __init__(self, cfg, total_steps: int = 0):
        self.run, self.total_steps = cfg.trainer.run_name, total_steps
        self.console = "console" in cfg.trainer.loggers
        self.trackers = Trackers(cfg, params=run_params(cfg), resume=True)
        self.dir = self.trackers.dir
        self.path = self.dir / "steps.jsonl"
        self.bar = None
        self.metrics = None
        try:
            from .observe import DashboardMetrics

            self.metrics = DashboardMetrics(cfg.trainer.run_name)
        except Exception as e:  # dashboard metrics are optional (no Ray metrics agent)
            log.warning("dashboard metrics disabled (the trackers still get every row): %s", e)

    def write(self, row: dict) -> None:
        self.trackers.log(row)
        if self.metrics is not None:
            self.metrics.record(row)
        if "time/step" not in row:  # a validation row: no step line
            return
        if self.total_steps and self.bar is None:  # started here: a resumed run starts past 0
            self.bar = progress_bar(total=self.total_steps, initial=row["step"] - 1, desc=self.run, unit="step")
        if self.console:
            line = console_line(self.run, self.total_steps, row)
            if self.bar is not None and not self.bar.disable:
                self.bar.write(line)  # above the bar
            else:
                print(line, flush=True)
        if self.bar is not None:
            self.bar.update(1)
            if row["step"] >= self.total_steps:
                self.bar.close()

    def rewind(self, step: int) -> None:
        """The run went back to `step` (a learner restart restored a checkpoint): the bar follows."""
        if self.bar is not None and not self.bar.disable:
            self.bar.n = step
            self.bar.refresh()

    def close(self):
        if self.bar is not None:
            self.bar.close()
        self.trackers.close()


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
