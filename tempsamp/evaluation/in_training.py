"""Validation during training: TimeLens-Bench on the run's own rollout engines (current weights) and
decode actors (eval video parameters), capped per dataset by eval.val_max_samples."""

from __future__ import annotations

from pathlib import Path

from .bench import first_per_dataset, load_bench
from .runner import eval_video_params, generate_predictions, write_outputs


def validate_on_pools(cfg, engines: list, decoders: list, family: str, processor, step: int, out_dir: Path) -> dict:
    """Per-dataset metrics of the engines' current weights; outputs under `out_dir`."""
    e = cfg.eval
    if not e.bench_dir:
        raise ValueError("eval.val_freq is set but eval.bench_dir is empty (or set BENCH_DIR)")
    samples, _ = load_bench(e.bench_dir, list(e.datasets), e.skip_missing_videos)
    samples = first_per_dataset(samples, e.val_max_samples)
    preds: list = []
    generate_predictions(samples, engines, decoders, eval_video_params(cfg, family), processor, cfg, preds.extend,
                         e.skip_missing_videos, progress=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics, *_ = write_outputs(preds, {p.key for p in preds}, list(e.datasets), out_dir, e.parse_mode,
                                {"model": f"{cfg.trainer.run_name}@step{step}", "step": step})
    return metrics
