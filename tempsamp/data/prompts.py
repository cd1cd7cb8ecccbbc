"""Prompt text shared by training and evaluation (RECIPE.md, identical in both)."""

from __future__ import annotations

import re

PROMPT_TEMPLATE = (
    'To accurately pinpoint the event "{}" in the video, determine the precise time period of the event. '
    'Provide the start and end times (in seconds, precise to two decimal places) in the format '
    '"start time to end time" within <answer> </answer> tags. For example: <answer> 12.5 to 17.8 </answer>.'
)
VIDEO_TOKEN = "<video>"

_QUERY_RE = re.compile(r'pinpoint the event "(.*)" in the video', re.DOTALL)


def normalize_query(query: str) -> str:
    """Collapse whitespace and strip a trailing '.' (as the original does)."""
    q = " ".join(str(query).split())
    return q[:-1].rstrip() if q.endswith(".") else q


def build_prompt(query: str) -> str:
    return PROMPT_TEMPLATE.format(normalize_query(query))


def build_problem(query: str) -> str:
    """Trainer `problem` field: the video placeholder followed by the prompt."""
    return VIDEO_TOKEN + build_prompt(query)


def extract_query(problem: str) -> str | None:
    """The bare event query inside a TimeLens prompt, or None if the text is not one."""
    m = _QUERY_RE.search(problem)
    return m.group(1) if m else None


def split_problem(problem: str) -> list[dict]:
    """`problem` split on <video> into chat content parts: [{"type": "video"}, {"type": "text", ...}]."""
    parts: list[dict] = []
    chunks = problem.split(VIDEO_TOKEN)
    for i, chunk in enumerate(chunks):
        if i > 0:
            parts.append({"type": "video"})
        if chunk.strip():
            parts.append({"type": "text", "text": chunk})
    return parts
