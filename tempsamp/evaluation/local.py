"""TimeLens-Bench on a model held in this process (no Ray): greedy replies, the same prompt, parse and
metrics as `tempsamp eval`. For the in-process paths (recipe check, ablation), which evaluate many small
models one after another where starting decode and engine actors per model would cost more than the eval."""

from __future__ import annotations

from ..config import Config
from ..data.prompts import build_problem
from ..data.video import decode_video
from .bench import first_per_dataset, load_bench
from .metrics import Prediction, all_metrics, dataset_metrics
from .protocol import eval_video_params, make_prediction


def evaluate_in_process(cfg: Config, model, processor, family: str, datasets: list[str] | None = None,
                        max_per_dataset: int = 0, video_cache: dict | None = None) -> tuple[dict, list[Prediction]]:
    """(per-dataset metrics, predictions) of `model` on `cfg.eval.bench_dir`, greedy, `cfg.eval.max_new_tokens`.
    `video_cache` (path -> decoded video) lets a caller evaluating several models decode each video once."""
    from ..models.policy import build_inputs, render_prompt
    from ..rollout.base import SamplingSpec
    from ..rollout.hf import sample_group

    e = cfg.eval
    if not e.bench_dir:
        raise ValueError("eval.bench_dir is empty: nothing to evaluate on")
    datasets = list(datasets or e.datasets)
    samples, _ = load_bench(e.bench_dir, datasets, e.skip_missing_videos)
    samples = first_per_dataset(samples, max_per_dataset)
    params = eval_video_params(cfg, family)
    cache = {} if video_cache is None else video_cache
    spec = SamplingSpec(n=1, greedy=True, temperature=0.0, max_new_tokens=e.max_new_tokens)
    was_training = model.training
    model.eval()
    preds: list[Prediction] = []
    try:
        for k, s in enumerate(samples):
            if s.video not in cache:
                cache[s.video] = decode_video(s.video, params)
            inputs = build_inputs(processor, render_prompt(processor, build_problem(s.query)), cache[s.video])
            text = sample_group(model, processor.tokenizer, inputs, k, spec, 0).texts[0]
            preds.append(make_prediction(s, text, e.parse_mode))
    finally:
        model.train(was_training)
    metrics = all_metrics(preds, datasets)
    metrics["all"] = dataset_metrics(preds)  # pooled over the datasets
    return metrics, preds
