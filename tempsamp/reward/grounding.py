r"""Grounding reward (RECIPE.md "Reward"): parse `<answer> a to b </answer>`, temporal IoU, format.

Two parsers:
- `parse_span` — the training parse of the original reward: first answer block (DOTALL) else the
  whole text; `X to Y` / `X and Y` (last match), then `X - Y` (last match), then the first two numbers.
- `parse_span_eval` — the original TimeLens-Bench eval protocol (`extract_time` in the original's
  scripts/eval/eval_timelens_bench.py, RECIPE.md "Evaluation"). It gives the original's span for
  every reply the original scores:
  1. lowercase; the content of the first match of `<answer>\s*(.*?)\s*</answer>` WITHOUT DOTALL
     (content with a line break inside does not match, so the next tag is tried; line breaks next
     to the tags are absorbed by `\s*`), else the whole reply — an empty `<answer></answer>` is a
     match, whose empty content yields no pair;
  2. first rule that yields a pair: clock times `h:mm:ss` / `mm:ss` (1-2 digit leading field, exactly
     two-digit further fields, optional `.fraction`, regex word boundaries on both sides: `00:05s` and
     `1:5` are no times) taken two by two; else the first `A - B` (spaces optional), else the first
     `A to B` (whitespace required around `to`), A and B = digits, optional `.`, optional digits, no
     word boundaries (`.5` reads `5`, `12.5s to` has no pair); else the standalone numbers
     `\b(\d+\.\d+|\d+)\b` two by two (`12.5s` yields `12`, `12to17` nothing);
  3. the FIRST pair, each end rounded with Python `round` (half to even: 2.5 -> 2, 3.5 -> 4).
  `None` when no pair; `evaluation.metrics.score_reply` then scores the failure span
  `(duration + 10, duration + 20)` like the original.

  Our deliberate differences from the original, each documented in README "Evaluation":
  - Numbers beyond float range: the original turns a >308-digit number into `inf` and crashes with
    `OverflowError` in `round` when it is in the first pair; we treat that reply as unparsed (failure
    span, IoU 0) so one junk reply cannot abort a benchmark run. A non-finite number in a LATER pair
    is ignored, as in the original.
  - Time: the original's `A - B` / `A to B` regexes backtrack cubically on long digit runs (400
    digits: ~0.2 s, 20 k digits: hours) and its answer-tag regex quadratically on long whitespace /
    unclosed tags. We match the same strings with linear-time patterns (possessive quantifiers and
    a "not after a digit" start, which cannot change the first match: backtracking into a number or
    starting inside a digit run never yields a match the greedy run start did not) and a linear scan
    for the answer tag. No length cap: every reply, however long, gets the original's span.
  - Parse rate and thresholds are metrics-side (`evaluation.metrics`): a reply counts as parsed when
    a pair was found (the original's .sh merge always reports 0, its .py compares with a rounded
    failure span), and R1@t uses exact IoUs (the original's merge uses IoUs rounded to 4 decimals).
Neither parser raises on arbitrary model output.
"""

from __future__ import annotations

import math
import re

import msgspec

# Training parse only: responses are capped by max_new_tokens (256 train, ~15 k chars at most);
# anything longer is junk and only its head is parsed. (The eval parse has no cap: it is linear.)
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


# ---- original eval protocol (see the module docstring) ------------------------------------------
_OPEN, _CLOSE = "<answer>", "</answer>"
_WS_RUN = re.compile(r"\s*")
# h:mm:ss or mm:ss (the optional `:ss` is tried first, as the original's alternation), fraction, \b.
_CLOCK = re.compile(r"\b(\d{1,2}:\d{2}(?::\d{2})?(?:\.\d+)?)\b")
# A / B of `A - B` and `A to B`. Possessive, and never starting right after a digit: the same first
# match as the plain backtracking pattern, in linear time (see the module docstring).
_EV_NUM = r"(?<!\d)(\d++\.?+\d*+)"
_EV_NUM_B = r"(\d++\.?+\d*+)"
_EV_DASH = re.compile(_EV_NUM + r"\s*+-\s*+" + _EV_NUM_B)
_EV_TO = re.compile(_EV_NUM + r"\s++to\s++" + _EV_NUM_B)
_EV_WORD_NUM = re.compile(r"\b(\d+\.\d+|\d+)\b")  # linear as is: only a run start passes \b


def _eval_answer_content(t: str) -> str | None:
    r"""group(1) of re.search(r"<answer>\s*(.*?)\s*</answer>", t) (no DOTALL), in linear time.

    For a tag at i: the leading \s* takes the whole whitespace run (giving some back never helps);
    the content then ends where the whitespace run before the first `</answer>` begins, and the
    match fails when that content holds a line break (then the next tag is tried)."""
    i = t.find(_OPEN)
    close = close_ws = nl = -1
    while i >= 0:
        q = _WS_RUN.match(t, i + len(_OPEN)).end()
        if close < q:  # first `</answer>` at or after q, and where its leading whitespace begins
            close = t.find(_CLOSE, q)
            if close < 0:
                return None
            close_ws = close
            while close_ws > 0 and t[close_ws - 1].isspace():
                close_ws -= 1
        if nl < q:
            nl = t.find("\n", q)
            if nl < 0:
                nl = len(t)
        end = max(q, close_ws)
        if nl >= end:
            return t[q:end]
        i = t.find(_OPEN, q)
    return None


def _clock_seconds(tok: str) -> float:
    *whole, sec = tok.split(":")
    minutes = 0
    for part in whole:
        minutes = minutes * 60 + int(part)
    return minutes * 60 + float(sec)  # int part exact, then + float: the original's arithmetic


def _first_two(pat: re.Pattern, text: str) -> tuple[str, str] | None:
    it = pat.finditer(text)
    a = next(it, None)
    b = next(it, None) if a is not None else None
    return None if b is None else (a.group(1), b.group(1))


def eval_pair(text: str) -> tuple[float, float] | None:
    """The original's first pair, unrounded (clock times in seconds); None when no rule yields one."""
    if not isinstance(text, str) or not text:
        return None
    text = text.lower()
    body = _eval_answer_content(text)
    if body is None:
        body = text
    clocks = _first_two(_CLOCK, body)
    if clocks is not None:
        return _clock_seconds(clocks[0]), _clock_seconds(clocks[1])
    m = _EV_DASH.search(body) or _EV_TO.search(body)
    if m is not None:
        return float(m.group(1)), float(m.group(2))
    nums = _first_two(_EV_WORD_NUM, body)
    return None if nums is None else (float(nums[0]), float(nums[1]))


def parse_span_eval(text: str) -> tuple[float, float] | None:
    """Original eval parse: the FIRST pair, each end rounded half to even. None when nothing parses,
    or when an end of that pair is beyond float range (the original crashes there)."""
    pair = eval_pair(text)
    if pair is None or not (math.isfinite(pair[0]) and math.isfinite(pair[1])):
        return None
    return float(round(pair[0])), float(round(pair[1]))
