"""Pure scoring for TimeLens-Bench: parse a reply (eval or training protocol), IoU, per-dataset metrics."""

from __future__ import annotations

from typing import Literal

import msgspec

from ..reward.grounding import parse_span, parse_span_eval, temporal_iou

THRESHOLDS = (0.3, 0.5, 0.7)
ParseMode = Literal["eval", "training"]


class Prediction(msgspec.Struct, kw_only=True):
    """One line of predictions.jsonl."""

    key: str
    dataset: str
    video: str
    video_id: str
    query: str
    gt: tuple[float, float]
    duration: float
    text: str
    span: tuple[float, float] | None  # the parsed span (None when nothing parsed)
    eval_span: tuple[float, float]  # the span scored (failure span in eval mode when unparsed)
    iou: float
    parsed: bool
    parse_mode: str
    weight_version: int = 0


def score_reply(text: str, gt: tuple[float, float], duration: float, mode: ParseMode = "eval"
                ) -> tuple[tuple[float, float] | None, tuple[float, float], float]:
    """(parsed span or None, span used for scoring, IoU).

    `eval`: the original TimeLens-Bench protocol (`reward.grounding.parse_span_eval`: its span for
    every reply) — first pair, each end rounded half to even, clock times understood; a reply with no
    pair (or, our one difference, a first pair beyond float range, where the original crashes) is
    scored as `(duration + 10, duration + 20)` (IoU 0) and its span is None (not parsed).
    `training`: the reward's parse (last match, no rounding); an unparsed reply scores IoU 0."""
    if mode == "eval":
        span = parse_span_eval(text)
        used = span if span is not None else (duration + 10.0, duration + 20.0)
    elif mode == "training":
        span = parse_span(text)
        used = span if span is not None else (0.0, 0.0)
    else:
        raise ValueError(f"unknown parse mode {mode!r} (eval | training)")
    return span, used, temporal_iou(used, tuple(gt))


def dataset_metrics(preds: list[Prediction]) -> dict:
    """R1@t = % of samples with IoU >= t; mIoU = mean IoU x 100; parse rate = % parsed."""
    n = len(preds)
    if n == 0:
        return {"count": 0, "mIoU": 0.0, "parse_rate": 0.0, **{f"R1@{t}": 0.0 for t in THRESHOLDS}}
    ious = [p.iou for p in preds]
    out = {f"R1@{t}": 100.0 * sum(1 for x in ious if x >= t) / n for t in THRESHOLDS}
    out["mIoU"] = 100.0 * sum(ious) / n
    out["parse_rate"] = 100.0 * sum(1 for p in preds if p.parsed) / n
    out["count"] = n
    return out


def all_metrics(preds: list[Prediction], datasets: list[str]) -> dict[str, dict]:
    by = {ds: [p for p in preds if p.dataset == ds] for ds in datasets}
    return {ds: dataset_metrics(ps) for ds, ps in by.items()}


def markdown_table(metrics: dict[str, dict], title: str = "") -> str:
    cols = ["R1@0.3", "R1@0.5", "R1@0.7", "mIoU", "parse_rate"]
    lines = [f"### {title}", ""] if title else []
    lines.append("| dataset | " + " | ".join(c.replace("parse_rate", "parse rate") for c in cols) + " | count |")
    lines.append("|---" * (len(cols) + 2) + "|")
    for ds, m in metrics.items():
        lines.append(f"| {ds} | " + " | ".join(f"{m[c]:.2f}" for c in cols) + f" | {m['count']} |")
    return "\n".join(lines) + "\n"
