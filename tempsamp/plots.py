"""Figures (matplotlib, Agg: no display needed): training curves from steps.jsonl for any runs
(`tempsamp plot`, the demo's figure) and per-dataset eval plots (`tempsamp eval`: IoU histogram, R1 vs
IoU threshold, a timeline strip of predicted vs ground-truth spans). Pure functions of their inputs;
each writes one PNG and returns its path."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

from .io import atomic_path

# the demo's panels: on-policy reward / IoU / format rate, and the GT answer's log-prob
CURVE_KEYS = [("reward/raw_score_mean_no_gt", "on-policy IoU + 0.1 format (unshaped)"),
              ("reward/iou_mean_no_gt", "on-policy IoU"),
              ("reward/format_rate_no_gt", "on-policy format rate"),
              ("learn/gt_logp_per_token", "log-prob of GT answer tokens")]


class PlotError(ValueError):
    """A run folder or steps file that cannot be plotted; the message names it."""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_steps(run: str | Path) -> list[dict]:
    """The rows of a run's steps.jsonl (`run` = the run's log folder or the file itself)."""
    p = Path(run)
    if p.is_dir() or (not p.exists() and p.suffix != ".jsonl"):
        p = p / "steps.jsonl"
    if not p.is_file():
        raise PlotError(f"{p}: no steps.jsonl (give a run's log folder, <trainer.log_dir>/<run>, or the file)")
    rows = []
    for i, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise PlotError(f"{p}:{i}: not a JSON row ({e})") from None
        if not isinstance(row, dict) or "step" not in row:
            raise PlotError(f"{p}:{i}: expected a JSON object with a `step`")
        rows.append(row)
    return rows


def training_curves(logs: dict[str, list[dict]], png: str | Path,
                    keys: Sequence[tuple[str, str]] = tuple(CURVE_KEYS), title: str = "") -> Path:
    """One panel per (row key, title), one line per run (`logs`: label -> rows); a key no run has is
    left out, NaN points are gaps. Returns the PNG path."""
    keys = [(k, t) for k, t in keys if any(k in r for rows in logs.values() for r in rows)]
    if not keys:
        raise PlotError(f"none of the metrics to plot is in these runs ({', '.join(logs)})")
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    for ax, (key, name) in zip(axes[0], keys):
        for label, rows in logs.items():
            pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker=".", label=label)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, plt, png)


def plot_runs(runs: Sequence[str | Path], png: str | Path, keys: Sequence[str] | None = None) -> Path:
    """`tempsamp plot`: training curves of every run folder (label = folder name; a repeated name gets
    its parent's name too). `keys`: row keys to plot (default CURVE_KEYS)."""
    labels: dict[str, list[dict]] = {}
    for r in runs:
        p = Path(r)
        base = p.parent if p.name == "steps.jsonl" else p
        label = base.name if base.name not in labels else f"{base.parent.name}/{base.name}"
        labels[label] = read_steps(p)
    panels = [(k, k) for k in keys] if keys else list(CURVE_KEYS)
    return training_curves(labels, png, panels)


# ---- eval plots ------------------------------------------------------------------------------------
def iou_histogram(ious: Sequence[float], png: str | Path, title: str, thresholds=(0.3, 0.5, 0.7)) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.hist(list(ious), bins=20, range=(0.0, 1.0), color="#4878a8", edgecolor="white")
    for t in thresholds:
        ax.axvline(t, color="#c44", ls="--", lw=1)
    ax.set_xlim(0, 1)
    ax.set_xlabel("IoU with the ground truth")
    ax.set_ylabel("queries")
    ax.set_title(f"{title}: IoU histogram (n={len(ious)})", fontsize=10)
    return _save(fig, plt, png)


def r1_curve(ious: Sequence[float], png: str | Path, title: str, thresholds=(0.3, 0.5, 0.7)) -> Path:
    """R1@t (% of queries with IoU >= t) for t in [0, 1]; the reported thresholds marked."""
    plt = _pyplot()
    n = max(1, len(ious))
    ts = [i / 100 for i in range(0, 101)]
    r1 = [100.0 * sum(1 for x in ious if x >= t) / n for t in ts]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.plot(ts, r1, color="#4878a8")
    for t in thresholds:
        v = 100.0 * sum(1 for x in ious if x >= t) / n
        ax.plot([t], [v], "o", color="#c44")
        ax.annotate(f"R1@{t} = {v:.1f}", (t, v), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 100)
    ax.set_xlabel("IoU threshold t")
    ax.set_ylabel("R1@t (%)")
    ax.grid(alpha=0.3)
    ax.set_title(f"{title}: R1 vs IoU threshold", fontsize=10)
    return _save(fig, plt, png)


def timeline_strip(items: Sequence[dict], png: str | Path, title: str) -> Path:
    """One row per query: the video's length (grey), the ground-truth span (green) and the predicted
    span (orange; "no answer" when the reply had none), in seconds. `items`: dicts with `label`,
    `duration`, `gt` (start, end), `pred` ((start, end) or None) and `iou`."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(items) + 1.6))
    for i, it in enumerate(items):
        y = len(items) - 1 - i
        ax.broken_barh([(0, it["duration"])], (y - 0.4, 0.8), color="#e6e6e6")
        g0, g1 = it["gt"]
        ax.broken_barh([(g0, max(g1 - g0, 1e-3))], (y - 0.05, 0.4), color="#3a9a4a")
        if it["pred"] is not None:
            p0, p1 = it["pred"]
            lo, hi = max(0.0, min(p0, p1)), min(max(p0, p1), it["duration"])
            if hi >= lo:  # a zero-length span still shows, as a thin bar
                ax.broken_barh([(lo, max(hi - lo, 0.004 * it["duration"]))], (y - 0.4, 0.35), color="#e08a2c")
            else:
                ax.text(0, y - 0.2, f" outside the video ({p0:g} to {p1:g})", fontsize=7, va="center",
                        color="#b05a00")
        else:
            ax.text(0, y - 0.2, " no answer", fontsize=7, va="center", color="#b05a00")
        ax.text(it["duration"], y, f" IoU {it['iou']:.2f}", fontsize=7, va="center")
    ax.set_yticks(range(len(items)))
    ax.set_yticklabels([it["label"] for it in reversed(items)], fontsize=7)
    ax.set_xlabel("seconds")
    ax.set_xlim(0, max((it["duration"] for it in items), default=1.0) * 1.15)
    ax.set_title(f"{title}: ground truth (green) vs predicted (orange)", fontsize=10)
    return _save(fig, plt, png)


def eval_plots(preds: Sequence, dataset: str, out_dir: str | Path, sample: int = 12) -> dict[str, Path]:
    """The three plots of one dataset's predictions (objects with `iou`, `gt`, `span`, `duration`,
    `video_id`, `query`, `key`) under `out_dir`: {"iou_histogram", "r1_vs_iou", "timeline"} -> PNG.
    The timeline shows `sample` queries spread evenly over the dataset's queries sorted by key."""
    out = Path(out_dir)
    ious = [float(p.iou) for p in preds]
    chosen = sorted(preds, key=lambda p: p.key)
    if len(chosen) > sample:
        step = len(chosen) / sample
        chosen = [chosen[math.floor(i * step)] for i in range(sample)]
    items = [{"label": f"{p.video_id}: {p.query[:40]}{'...' if len(p.query) > 40 else ''}",
              "duration": float(p.duration), "gt": tuple(p.gt), "pred": tuple(p.span) if p.span is not None else None,
              "iou": float(p.iou)} for p in chosen]
    return {"iou_histogram": iou_histogram(ious, out / f"{dataset}_iou_histogram.png", dataset),
            "r1_vs_iou": r1_curve(ious, out / f"{dataset}_r1_vs_iou.png", dataset),
            "timeline": timeline_strip(items, out / f"{dataset}_timeline.png", dataset)}


def _save(fig, plt, png: str | Path, tight: bool = True) -> Path:
    png = Path(png)
    if tight:
        fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight")
    plt.close(fig)
    return png


def _moving_mean(vals: Sequence[float], window: int) -> list[float]:
    out, acc = [], []
    for v in vals:
        acc.append(v)
        out.append(sum(acc[-window:]) / len(acc[-window:]))
    return out


def seed_band_curves(panels: dict[str, dict[str, list[list[dict]]]], keys: Sequence[tuple[str, str]],
                     png: str | Path, smooth: int = 5, title: str = "") -> Path:
    """Mean curve over seeds with a ±1 std band, per arm; one row of panels per group (e.g. the ablation's
    start), one column per (row key, title). `panels`: group -> arm -> one list of step rows per seed.
    Each seed's curve is first smoothed by a trailing `smooth`-step mean. Returns the PNG path."""
    if not panels or not keys:
        raise PlotError("nothing to plot: no runs or no metrics")
    plt = _pyplot()
    fig, axes = plt.subplots(len(panels), len(keys), figsize=(4.2 * len(keys), 3.3 * len(panels)), squeeze=False)
    for row_axes, (group, arms) in zip(axes, panels.items()):
        for ax, (key, name) in zip(row_axes, keys):
            for arm, seeds in arms.items():
                curves = [_moving_mean([float(r[key]) for r in rows], smooth) for rows in seeds if rows]
                if not curves:
                    continue
                n = min(len(c) for c in curves)
                steps = [r["step"] for r in seeds[0][:n]]
                cols = [[c[i] for c in curves] for i in range(n)]
                mean = [sum(col) / len(col) for col in cols]
                std = [math.sqrt(sum((x - m) ** 2 for x in col) / max(1, len(col) - 1)) for col, m in zip(cols, mean)]
                line, = ax.plot(steps, mean, label=arm)
                ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                                color=line.get_color(), alpha=0.15)
            ax.set_title(f"{group}: {name}", fontsize=10)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        row_axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, plt, png)
