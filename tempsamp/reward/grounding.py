"""Grounding reward (RECIPE.md "Reward"): parse `<answer> a to b </answer>`, temporal IoU, format.

Two parsers:
- `parse_span` — the training parse of the original reward: first answer block (DOTALL) else the
  whole text; `X to Y` / `X and Y` (last match), then `X - Y` (last match), then the first two numbers.
- `parse_span_eval` — the original TimeLens-Bench eval protocol: lowercase, answer block without
  DOTALL, `hh:mm:ss`/`mm:ss`, `X - Y`, `X to Y`, then numbers in pairs; FIRST pair, rounded.
Neither raises on arbitrary model output.
"""

from __future__ import annotations

import math
import re

import msgspec

# Responses are capped by max_new_tokens (256 train / 512 eval, ~15 k chars at most); anything longer
# is junk and only its head is parsed, which bounds the eval regex's worst case.
MAX_CHARS = 20_000
# Bounded digit runs that must start at a run boundary: every regex here stays linear on digit floods
# (an unbounded \d+ backtracks quadratically on "999...9"); numbers with > 12 digits are not spans.
_N = r"(?<![\d.])(\d{1,12}(?:\.\d{1,9})?|\.\d{1,9})(?!\d)"
_TO_AND = re.compile(_N + r"\s*(?:to|and)\s*" + _N)
_DASH = re.compile(_N + r"\s*-\s*" + _N)
_NUMS = re.compile(_N)
_STRICT = re.compile(r"^\s*<answer>\s*" + _N + r"\s+to\s+" + _N + r"\s*</answer>\s*$")


class RewardResult(msgspec.Struct, frozen=True):
    iou: float
    format: float
    score: float
    span: tuple[float, float] | None


def _finite_pair(a: str, b: str) -> tuple[float, float] | None:
    try:
        x, y = float(a), float(b)
    except (ValueError, OverflowError):
        return None
    if not (math.isfinite(x) and math.isfinite(y)):
        return None
    return x, y


def _pair_in(text: str) -> tuple[float, float] | None:
    for pat in (_TO_AND, _DASH):
        last = None
        for last in pat.finditer(text):
            pass
        if last is not None:
            pair = _finite_pair(last.group(1), last.group(2))
            if pair is not None:
                return pair
    nums = _NUMS.findall(text, 0, len(text))
    if len(nums) >= 2:
        return _finite_pair(nums[0], nums[1])
    return None


def _first_answer_block(text: str) -> str | None:
    """Same as re.search(r"<answer>(.*?)</answer>", text, re.DOTALL).group(1), in linear time."""
    i = text.find("<answer>")
    if i < 0:
        return None
    j = text.find("</answer>", i + 8)
    return None if j < 0 else text[i + 8: j]


def parse_span(text: str) -> tuple[float, float] | None:
    """Training parse. Returns (start, end) as written (may be reversed) or None."""
    if not isinstance(text, str) or not text:
        return None
    text = text[:MAX_CHARS]
    block = _first_answer_block(text)
    return _pair_in(block if block is not None else text)


def has_format(text: str, strict: bool = False) -> bool:
    """Original: the first answer block holds a number pair. Strict: the whole reply is that block."""
    if not isinstance(text, str):
        return False
    text = text[:MAX_CHARS]
    if strict:
        return _STRICT.match(text) is not None
    block = _first_answer_block(text)
    return block is not None and _pair_in(block) is not None


def temporal_iou(a: tuple[float, float] | None, b: tuple[float, float] | None) -> float:
    """inter / union of two [start, end] spans; 0 when either is None or the union is empty.
    A reversed span (start > end) has no intersection with anything."""
    if a is None or b is None:
        return 0.0
    inter = min(a[1], b[1]) - max(a[0], b[0])
    union = max(a[1], b[1]) - min(a[0], b[0])
    if inter <= 0 or union <= 0 or not math.isfinite(union):
        return 0.0
    return float(min(1.0, inter / union))


def grounding_reward(response: str, answer: str | tuple[float, float], format_weight: float = 0.1,
                     strict_format: bool = False) -> RewardResult:
    """score = iou + format_weight * format. `answer` is the trainer answer text or a (start, end)."""
    gt = answer if isinstance(answer, tuple) else parse_span(answer)
    span = parse_span(response)
    iou = temporal_iou(span, gt)
    fmt = 1.0 if has_format(response, strict_format) else 0.0
    return RewardResult(iou=iou, format=fmt, score=iou + format_weight * fmt, span=span)


# ---- original eval protocol -------------------------------------------------------------------
_EVAL_ANSWER = re.compile(r"<answer>\s*(.*?)\s*</answer>")  # no DOTALL, as the original
_TS = r"(?<!\d)((?:\d{1,6}:)?\d{1,6}:\d{1,6}(?:\.\d{1,6})?)"
_EVAL_TS_PAIR = re.compile(_TS + r".*?" + _TS)
_EVAL_DASH = re.compile(_N + r"\s*-\s*" + _N)
_EVAL_TO = re.compile(_N + r"\s*to\s*" + _N)


def _ts_seconds(ts: str) -> float:
    total = 0.0
    for part in ts.split(":"):
        total = total * 60 + float(part)
    return total


def parse_span_eval(text: str) -> tuple[float, float] | None:
    """Original eval parse: the FIRST pair, rounded to integers. None when nothing parses."""
    if not isinstance(text, str) or not text:
        return None
    text = text[:MAX_CHARS].lower()
    m = _EVAL_ANSWER.search(text) if "</answer>" in text else None
    body = m.group(1) if m else text
    try:
        ts = _EVAL_TS_PAIR.search(body)
        if ts:
            s, e = _ts_seconds(ts.group(1)), _ts_seconds(ts.group(2))
        else:
            pm = _EVAL_DASH.search(body) or _EVAL_TO.search(body)
            if pm:
                s, e = float(pm.group(1)), float(pm.group(2))
            else:
                nums = _NUMS.findall(body)
                if len(nums) < 2:
                    return None
                s, e = float(nums[0]), float(nums[1])
        if not (math.isfinite(s) and math.isfinite(e)):
            return None
        return float(round(s)), float(round(e))
    except (ValueError, OverflowError):
        return None
