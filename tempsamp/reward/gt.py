"""The ground-truth response injected into each group (the original's format)."""

from __future__ import annotations

from ..data.records import parse_answer_span


def build_gt_response(answer_or_span: str | tuple[float, float] | list[float]) -> str:
    """`<answer> {start:.2f} to {end:.2f} </answer>` from a trainer answer or a (start, end)."""
    if isinstance(answer_or_span, str):
        s, e = parse_answer_span(answer_or_span, where="GT answer")
    else:
        s, e = (float(v) for v in answer_or_span)
    return f"<answer> {s:.2f} to {e:.2f} </answer>"
