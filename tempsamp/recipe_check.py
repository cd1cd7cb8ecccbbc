"""In-process recipe check (no Ray): the algorithm's cores wired into one loop on one process.

Rollout (HF generate on the learner's own model, so every row is exactly on-policy), reward stage
(`build_train_batch`: IoU + format, shaping, GT injection, group advantages) and learner
(`LearnerCore.train_step`: PPO-clip loss, AdamW) — the same functions the Ray actors wrap. Vanilla
GRPO and TempSamp start from the same checkpoint with the same seeds; both curves are printed and
written as JSONL, so the effect of GT injection is visible without the distributed system.

`tempsamp recipe-check` runs it; `tests/test_recipe_check.py` runs a short version.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .algo.batch import TrainBatch, build_train_batch, reward_options
from .algo.filtering import keep_informative, merge_batches
from .config import DEMO_CONFIG, Config, effective_recipe, load_config

CURVE_KEYS = ("reward/format_rate_no_gt", "reward/iou_mean_no_gt", "reward/raw_score_mean_no_gt",
              "adv/zero_groups", "learn/gt_logp_per_token")


def run_algorithm(cfg: Config, model_dir: str, log_path: Path | None = None, echo: bool = True,
                  final: Callable[[Any], None] | None = None) -> list[dict]:
    """Train `cfg.trainer.max_steps` steps in this process; one metrics row per step. `final(core)` is
    called with the trained `LearnerCore` after the last step (export or evaluate the final model)."""
    from .data.video import VideoParams, decode_video
    from .learner.core import LearnerCore
    from .models.loading import detect_family
    from .models.policy import build_inputs, render_prompt
    from .models.text_tokenizer import special_ids
    from .rollout.base import SamplingSpec
    from .rollout.hf import sample_group
    from .data.dataset import load_dataset
    from .data.sampler import EpochSampler

    torch.manual_seed(cfg.data.seed)
    records, _ = load_dataset(cfg)  # same checks and bad-sample policy as `tempsamp train`
    if not records:
        raise ValueError(f"no training records in {list(cfg.data.train_files)}")
    params = VideoParams.from_config(cfg.video, detect_family(model_dir))
    steps = cfg.trainer.max_steps
    core = LearnerCore(cfg, model_dir, total_steps=steps, device="cpu")
    tok = core.processor.tokenizer
    eos_id, pad_id = special_ids(tok)
    videos = [decode_video(rec.video, params) for rec in records]  # decoded once for the whole run
    prompts = [render_prompt(core.processor, rec.problem) for rec in records]
    inputs = [build_inputs(core.processor, p, v) for p, v in zip(prompts, videos)]
    sampler = EpochSampler(len(records), cfg.data.prompts_per_step, cfg.data.seed, cfg.data.shuffle)
    opts = reward_options(cfg)
    recipe = effective_recipe(cfg)
    rows: list[dict] = []
    out = log_path.open("w") if log_path is not None else None
    try:
        def scored_batch(step: int, idx: list[int], round: int) -> TrainBatch:
            # rollout: HF generate on the learner's own model (exactly on-policy), seeded per (step, prompt)
            spec = SamplingSpec.for_step(cfg.rollout, step, round)
            core.model.eval()
            groups = [sample_group(core.model, tok, inputs[i], j, spec, step) for j, i in enumerate(idx)]
            batch = build_train_batch(groups, [records[i].span() for i in idx], [prompts[i] for i in idx],
                                      [videos[i] for i in idx], step=step, eos_id=eos_id, pad_id=pad_id,
                                      encode=lambda t: tok.encode(t, add_special_tokens=False), **opts)
            return keep_informative(batch) if recipe.filter_groups else batch

        for step in range(1, steps + 1):
            t0 = time.time()
            _, idx = sampler.next()
            batch = first = scored_batch(step, idx, 0)
            if recipe.filter_groups:  # dynamic sampling, as the trainer does it
                parts = [first]
                while sum(len(b.groups) for b in parts) < len(idx) and len(parts) <= cfg.algorithm.filter_max_rounds:
                    parts.append(scored_batch(step, sampler.next()[1], len(parts)))
                batch = merge_batches(parts, len(idx))
                first.metrics.update({"filter/kept_groups": float(len(batch.groups)),
                                      "filter/rounds": float(len(parts) - 1)})
            t_roll = time.time() - t0
            learn = core.train_step(batch, {g.key: g.video for g in batch.groups})
            row = {"step": step, **{k: v for k, v in first.metrics.items() if not k.startswith("sample/")},
                   **{f"learn/{k}": v for k, v in learn.items()}, "sample/text": first.metrics["sample/text"],
                   "time/rollout_s": t_roll, "time/step_s": time.time() - t0}
            rows.append(row)
            if out is not None:
                out.write(json.dumps(row) + "\n")
                out.flush()
            if echo:
                print(f"  {cfg.algorithm.name:8s} step {step:3d}/{steps}: format {row['reward/format_rate_no_gt']:.2f} "
                      f"IoU {row['reward/iou_mean_no_gt']:.3f} zero-adv groups {row['adv/zero_groups']:.2f} "
                      f"GT logp/tok {row['learn/gt_logp_per_token']:.2f} ({row['time/step_s']:.1f}s) "
                      f"| {row['sample/text'][:60]!r}", flush=True)
        if final is not None:
            final(core)
    finally:
        if out is not None:
            out.close()
    return rows


def summarize(curves: dict[str, list[dict]], last: int = 5) -> dict:
    """Per algorithm: first/last-`last` means of the curve keys (NaN-free keys only)."""
    res = {}
    for algo, rows in curves.items():
        s = {}
        for k in CURVE_KEYS:
            vals = np.array([r.get(k, float("nan")) for r in rows], dtype=float)
            if np.all(np.isnan(vals)):
                continue
            s[k] = {"first": float(np.nanmean(vals[:last])), "last": float(np.nanmean(vals[-last:])),
                    "max": float(np.nanmax(vals))}
        res[algo] = s
    return res


def window_means(rows: list[dict], key: str = "reward/format_rate_no_gt", width: int = 10) -> list[float]:
    """Means of `key` over consecutive `width`-step windows (the curve without the per-step noise)."""
    vals = [r[key] for r in rows]
    return [float(np.mean(vals[i:i + width])) for i in range(0, len(vals), width)]


def curves_table(curves: dict[str, list[dict]]) -> str:
    algos = list(curves)
    head = "step | " + " | ".join(f"{a:>8s} format  IoU   zero-adv" for a in algos)
    lines = [head, "-" * len(head)]
    n = max(len(r) for r in curves.values())
    for i in range(n):
        cells = []
        for a in algos:
            r = curves[a][i] if i < len(curves[a]) else {}
            cells.append(f"{r.get('reward/format_rate_no_gt', float('nan')):15.2f} "
                         f"{r.get('reward/iou_mean_no_gt', float('nan')):5.3f} "
                         f"{r.get('adv/zero_groups', float('nan')):8.2f}")
        lines.append(f"{i + 1:4d} | " + " | ".join(cells))
    return "\n".join(lines)


def run_recipe_check(out: str = "outputs/recipe_check", steps: int | None = None, config: str | None = None,
                     overrides: list[str] | None = None,
                     algorithms: tuple[str, ...] = ("grpo", "grpo+filter", "tempsamp"),
                     n_train: int = 16) -> dict:
    """Synthetic data + tiny model, then each arm (GRPO, GRPO with dynamic sampling, TempSamp) in this
    process from the same start and seeds. Returns the summary."""
    from .data.synthetic import generate
    from .models.tiny import build_tiny_model

    out_p = Path(out).absolute()
    data_dir = out_p / "data"
    train_jsonl = data_dir / "train.jsonl"

    def algo_config(arm: str) -> Config:
        name, _, extra = arm.partition("+")  # "grpo+filter": GRPO with dynamic sampling (filter_groups)
        if extra not in ("", "filter"):
            raise ValueError(f"unknown recipe-check arm {arm!r} (grpo, grpo+filter, tempsamp, tempsamp+filter)")
        ov = [f"algorithm.name={name}",  # the preset decides GT injection and shaping (config.PRESETS)
              *(["algorithm.filter_groups=true"] if extra else []),
              f"data.train_files=[{train_jsonl}]", *(overrides or [])]
        if steps is not None:
            ov.append(f"trainer.max_steps={steps}")
        return load_config(config or DEMO_CONFIG, ov, env={})

    configs = {algo: algo_config(algo) for algo in algorithms}  # a bad config or override fails here, first
    out_p.mkdir(parents=True, exist_ok=True)
    generate(data_dir, n_train=n_train, n_bench=2, seed=0)  # writes data_dir/train.jsonl
    family = next(iter(configs.values())).model.tiny_family
    model_dir = str(build_tiny_model(out_p / "models" / f"tiny_{family}", family))
    curves = {}
    for algo, cfg in configs.items():
        print(f"recipe-check: {algo}, {cfg.trainer.max_steps} steps, lr {cfg.learner.lr:g}, "
              f"{cfg.learner.mini_batches_per_step} update(s)/step, in-process (no Ray)", flush=True)
        curves[algo] = run_algorithm(cfg, model_dir, out_p / f"{algo}.jsonl")
    print(curves_table(curves))
    summary = summarize(curves)
    for algo, s in summary.items():
        s["format_rate_no_gt_by_10_steps"] = window_means(curves[algo])
        print(f"{algo:9s} " + ", ".join(f"{k.split('/')[-1]} {v['first']:.2f} -> {v['last']:.2f}"
                                        for k, v in s.items() if isinstance(v, dict)))
        print(f"{algo:9s} on-policy format rate per 10 steps: "
              + " ".join(f"{x:.2f}" for x in s["format_rate_no_gt_by_10_steps"]))
    (out_p / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
