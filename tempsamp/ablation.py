"""Seeded ablation of the recipe's components, in-process (the recipe check's loop, no Ray).

Arms: GRPO, GRPO + shaping, GRPO + GT injection, TempSamp (injection + shaping), GRPO + group filtering
(dynamic sampling). Starts: `random` (the random tiny model: GRPO's groups all tie at 0) and `warm` (the
tiny model after a short TempSamp phase, made once and shared by every arm, so the answer format is partly
learned and GRPO has non-zero advantages from step 1). Every (start, arm, seed) run logs its step rows
and the final model's TimeLens-Bench metrics (in-process greedy eval of the synthetic bench); finished
runs are kept on disk and skipped on a rerun, so an interrupted ablation resumes where it stopped.

`benchmarks/ablation.py` is the command line; the statistics here are pure functions of the step rows.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from .config import DEMO_CONFIG, Config, load_config

# arm -> config overrides (the preset of algorithm.name decides GT injection and shaping; explicit keys win)
ARMS: dict[str, list[str]] = {
    "grpo": ["algorithm.name=grpo"],
    "grpo+shaping": ["algorithm.name=grpo", "reward.shaping=true"],
    "grpo+gt": ["algorithm.name=grpo", "algorithm.use_gt_injection=true"],
    "tempsamp": ["algorithm.name=tempsamp"],
    # at most 2 extra prompt draws per step (the default is 3): bounds the arm's cost from the random start,
    # where every group ties and every draw is dropped
    "grpo+filter": ["algorithm.name=grpo", "algorithm.filter_groups=true", "algorithm.filter_max_rounds=2"],
}
STARTS = ("random", "warm")
FORMAT_KEY, IOU_KEY, SCORE_KEY = ("reward/format_rate_no_gt", "reward/iou_mean_no_gt",
                                  "reward/raw_score_mean_no_gt")
ZERO_KEY = "adv/zero_groups"
# entries of a step row that are not measurements of the algorithm: wall-clock times (time/*, and every
# key in seconds, `*_s`, e.g. learn/learn_s) and the sample text
NON_METRIC_PREFIXES = ("time/", "sample/")


class AblationError(ValueError):
    """A bad arm, start or run file; the message names it."""


# ---- statistics (pure) ----------------------------------------------------------------------------
def steps_to(rows: Sequence[dict], key: str = FORMAT_KEY, threshold: float = 0.5, window: int = 5) -> int | None:
    """First step at which the mean of `key` over the last `window` steps (fewer at the start) reaches
    `threshold`; None when it never does. The window keeps one lucky step from counting."""
    vals: list[float] = []
    for r in rows:
        vals.append(float(r[key]))
        if np.mean(vals[-window:]) >= threshold:
            return int(r["step"])
    return None


def run_summary(rows: Sequence[dict], last: int = 10) -> dict:
    """One run's figures: means over the last `last` steps of on-policy IoU, format rate and (unshaped)
    score; steps to format rate 0.5; the fraction of zero-advantage groups over the whole run."""
    if not rows:
        raise AblationError("a run with no step rows cannot be summarised")
    tail = rows[-last:]
    return {"iou_last": float(np.mean([r[IOU_KEY] for r in tail])),
            "format_last": float(np.mean([r[FORMAT_KEY] for r in tail])),
            "score_last": float(np.mean([r[SCORE_KEY] for r in tail])),
            "steps_to_format_0.5": steps_to(rows),
            "zero_adv_frac": float(np.mean([r[ZERO_KEY] for r in rows])),
            "steps": len(rows)}


def aggregate(summaries: Sequence[dict]) -> dict:
    """Mean and sample standard deviation over seeds of each run figure. `steps_to_format_0.5`: mean over
    the seeds that reached it, with how many did (`reached`)."""
    out: dict = {"seeds": len(summaries)}
    for k in ("iou_last", "format_last", "score_last", "zero_adv_frac"):
        v = np.array([s[k] for s in summaries], dtype=float)
        out[k] = (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0)
    reached = [s["steps_to_format_0.5"] for s in summaries if s["steps_to_format_0.5"] is not None]
    out["reached"] = len(reached)
    out["steps_to_format_0.5"] = float(np.mean(reached)) if reached else None
    for k in ("eval_R1@0.5", "eval_mIoU", "eval_parse_rate"):
        v = np.array([s[k] for s in summaries if k in s], dtype=float)
        if len(v):
            out[k] = (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0)
    return out


def span_baselines(bench_dir: str | Path, datasets: Sequence[str]) -> dict[str, dict]:
    """R1@0.5 and mIoU (pooled, in %) of answers that ignore the video and the query — the whole video and its
    middle half — on the same bench: what an eval figure must beat before it says anything about grounding."""
    from .evaluation.bench import load_bench
    from .reward.grounding import temporal_iou

    samples, _ = load_bench(bench_dir, list(datasets))
    if not samples:
        raise AblationError(f"{bench_dir}: no bench queries for {', '.join(datasets)}")
    out = {}
    for name, (a, b) in {"whole video": (0.0, 1.0), "middle half": (0.25, 0.75)}.items():
        ious = [temporal_iou((a * x.duration, b * x.duration), tuple(x.gt)) for x in samples]
        out[name] = {"R1@0.5": 100.0 * sum(i >= 0.5 for i in ious) / len(ious), "mIoU": 100.0 * float(np.mean(ious))}
    return out


def _pm(x: tuple[float, float] | None, digits: int = 3) -> str:
    if x is None:
        return "—"
    return f"{x[0]:.{digits}f} ± {x[1]:.{digits}f}"


def markdown_table(agg: dict[str, dict[str, dict]], steps: dict[str, int]) -> str:
    """One table per start: arm rows, mean ± std over seeds."""
    lines = []
    for start, arms in agg.items():
        lines += [f"**Start: {start}** ({steps.get(start, '?')} steps per run; last 10 steps, mean ± std over seeds; "
                  "eval = final model, greedy, synthetic TimeLens-Bench, all datasets pooled)", "",
                  "| arm | IoU (on-policy) | format rate | score (IoU + 0.1 format) | steps to format 0.5 "
                  "| zero-adv groups | eval R1@0.5 | eval mIoU | eval parse % |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for arm, a in arms.items():
            reach = (f"{a['steps_to_format_0.5']:.1f} ({a['reached']}/{a['seeds']})" if a["reached"]
                     else f"never (0/{a['seeds']})")
            lines.append(f"| {arm} | {_pm(a['iou_last'])} | {_pm(a['format_last'], digits=2)} | {_pm(a['score_last'])} "
                         f"| {reach} | {_pm(a['zero_adv_frac'], digits=2)} | {_pm(a.get('eval_R1@0.5'), digits=1)} "
                         f"| {_pm(a.get('eval_mIoU'), digits=1)} | {_pm(a.get('eval_parse_rate'), digits=0)} |")
        lines.append("")
    return "\n".join(lines)


def metric_items(row: dict) -> dict:
    """The numbers of a step row that must repeat exactly on a rerun (no wall-clock times, no text)."""
    return {k: v for k, v in row.items() if not k.startswith(NON_METRIC_PREFIXES) and not k.endswith("_s")}


def compare_runs(a: Sequence[dict], b: Sequence[dict]) -> list[str]:
    """Differences between two runs' logged numbers (bit for bit; NaN equals NaN); empty when identical."""
    diffs = []
    if len(a) != len(b):
        diffs.append(f"{len(a)} vs {len(b)} steps")
    for ra, rb in zip(a, b):
        ma, mb = metric_items(ra), metric_items(rb)
        for k in sorted(set(ma) | set(mb)):
            x, y = ma.get(k), mb.get(k)
            same = x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))
            if not same:
                diffs.append(f"step {ra.get('step')}: {k}: {x!r} vs {y!r}")
    return diffs


# ---- running ---------------------------------------------------------------------------------------
def arm_config(arm: str, train_jsonl: str, bench_dir: str, steps: int, seed: int, config: str | None = None,
               overrides: Sequence[str] = ()) -> Config:
    """The demo config (in-process HF rollout) for one run: the arm's recipe, `steps` steps, the seed for the
    prompt order (data.seed) and sampling (rollout.seed)."""
    if arm not in ARMS:
        raise AblationError(f"unknown arm {arm!r} (one of {', '.join(ARMS)})")
    return load_config(config or DEMO_CONFIG,
                       [*ARMS[arm], f"data.train_files=[{train_jsonl}]", f"eval.bench_dir={bench_dir}",
                        f"trainer.max_steps={steps}", f"data.seed={seed}", f"rollout.seed={seed}",
                        "rollout.backend=hf", *overrides], env={})


def train_and_eval(cfg: Config, model_dir: str, log_path: Path, video_cache: dict, export_dir: Path | None = None,
                   eval_max_per_dataset: int = 0) -> tuple[list[dict], dict]:
    """One run: train in-process, then evaluate the final model on cfg.eval.bench_dir (all queries, or the
    first `eval_max_per_dataset` of each dataset). Returns (rows, eval metrics per dataset and pooled as
    `all`); `export_dir` also saves the final model as an HF folder."""
    from .evaluation.local import evaluate_in_process
    from .models.loading import detect_family
    from .recipe_check import run_algorithm

    result: dict = {}

    def final(core) -> None:
        if export_dir is not None:
            core.export_hf(str(export_dir))
        metrics, _ = evaluate_in_process(cfg, core.model, core.processor, detect_family(model_dir),
                                         max_per_dataset=eval_max_per_dataset, video_cache=video_cache)
        result.update(metrics)

    rows = run_algorithm(cfg, model_dir, log_path, echo=False, final=final)
    return rows, result


def run_file(out: Path, start: str, arm: str, seed: int) -> Path:
    return out / "runs" / start / arm / f"seed{seed}.json"


def read_run(path: Path) -> dict:
    try:
        rec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise AblationError(f"{path}: unreadable run file ({e}); delete it to rerun that run") from None
    if not isinstance(rec, dict) or "rows" not in rec or "eval" not in rec:
        raise AblationError(f"{path}: expected a JSON object with `rows` and `eval`; delete it to rerun that run")
    return rec


def with_eval(summary: dict, eval_metrics: dict) -> dict:
    pooled = eval_metrics.get("all", {})
    return {**summary, "eval_R1@0.5": pooled.get("R1@0.5", float("nan")),
            "eval_mIoU": pooled.get("mIoU", float("nan")), "eval_parse_rate": pooled.get("parse_rate", float("nan"))}


def run_ablation(out: str | Path, arms: Sequence[str], starts: Sequence[str], seeds: int, steps: dict[str, int],
                 warm_steps: int, n_train: int = 16, n_bench: int = 4, config: str | None = None,
                 overrides: Sequence[str] = (), start_overrides: dict[str, list[str]] | None = None,
                 echo=print) -> dict:
    """Every (start, arm, seed) run; returns {start: {arm: [run record]}} (record: rows, eval, summary,
    seconds). Data, the tiny model and the warm start are made once under `out` and reused.
    `start_overrides`: extra overrides for the runs of one start (e.g. a smaller lr from the warm start)."""
    from .data.synthetic import generate
    from .models.tiny import build_tiny_model

    for a in arms:
        if a not in ARMS:
            raise AblationError(f"unknown arm {a!r} (one of {', '.join(ARMS)})")
    for s in starts:
        if s not in STARTS:
            raise AblationError(f"unknown start {s!r} (one of {', '.join(STARTS)})")
    out = Path(out).absolute()
    data_dir = out / "data"
    train_jsonl, bench_dir = str(data_dir / "train.jsonl"), str(data_dir / "bench")
    start_ov = {start: [*overrides, *(start_overrides or {}).get(start, [])] for start in starts}
    # a bad override (for every run or for one start's runs) fails here, before any work
    first, *_ = [arm_config(arms[0], train_jsonl, bench_dir, 1, 0, config, start_ov[start]) for start in starts]
    if not (data_dir / "train.jsonl").exists():
        generate(data_dir, n_train=n_train, n_bench=n_bench, seed=0)
    random_dir = out / "models" / "random"
    if not (random_dir / "config.json").exists():
        build_tiny_model(random_dir, first.model.tiny_family)
    video_cache: dict = {}
    model_dirs = {"random": str(random_dir), "warm": str(out / "models" / "warm")}
    if "warm" in starts and not (Path(model_dirs["warm"]) / "config.json").exists():
        t0 = time.time()
        echo(f"ablation: warm start = {warm_steps} TempSamp steps from the random model (seed 1000)")
        cfg = arm_config("tempsamp", train_jsonl, bench_dir, warm_steps, 1000, config, overrides)
        rows, ev = train_and_eval(cfg, model_dirs["random"], out / "warm_start.jsonl", video_cache,
                                  export_dir=Path(model_dirs["warm"]))
        s = run_summary(rows)
        (out / "warm_start.json").write_text(json.dumps({"summary": s, "eval": ev}, indent=1))
        echo(f"ablation: warm start made in {time.time() - t0:.0f}s: format over its last 10 steps "
             f"{s['format_last']:.2f}, IoU {s['iou_last']:.3f}; eval mIoU {ev['all']['mIoU']:.1f}")
    results: dict = {start: {arm: [] for arm in arms} for start in starts}
    # seed outermost: an ablation stopped early still has every arm and start for the seeds it finished
    for seed in range(seeds):
        for start in starts:
            for arm in arms:
                path = run_file(out, start, arm, seed)
                if path.exists():
                    rec = read_run(path)
                else:
                    t0 = time.time()
                    cfg = arm_config(arm, train_jsonl, bench_dir, steps[start], seed, config, start_ov[start])
                    path.parent.mkdir(parents=True, exist_ok=True)
                    rows, ev = train_and_eval(cfg, model_dirs[start], path.with_suffix(".jsonl"), video_cache)
                    rec = {"start": start, "arm": arm, "seed": seed, "rows": rows, "eval": ev,
                           "seconds": time.time() - t0}
                    tmp = path.with_suffix(".json.tmp")
                    tmp.write_text(json.dumps(rec))
                    tmp.replace(path)  # a run counts as done only once complete
                rec["summary"] = with_eval(run_summary(rec["rows"]), rec["eval"])
                s = rec["summary"]
                echo(f"  {start:6s} {arm:13s} seed {seed}: IoU {s['iou_last']:.3f} format {s['format_last']:.2f} "
                     f"zero-adv {s['zero_adv_frac']:.2f} to-0.5 {s['steps_to_format_0.5']} | eval R1@0.5 "
                     f"{s['eval_R1@0.5']:.1f} mIoU {s['eval_mIoU']:.1f} ({rec.get('seconds', 0):.0f}s)")
                results[start][arm].append(rec)
    return results
