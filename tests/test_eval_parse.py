"""The "eval" parse mode gives the original TimeLens-Bench scorer's span (`extract_time` + first pair +
`round`) for every reply; RECIPE.md "Evaluation" states its rules. Every expected span below was
worked out by hand from those rules (the comment says why where it is not obvious), not produced by
running our code. Also: failure span / parse rate, our documented differences (overflow, linear
time), the linear patterns against the plain rule regexes, and the training parse left unchanged."""

import math
import random
import re
import time

import pytest

from tempsamp.evaluation.metrics import Prediction, dataset_metrics, score_reply
from tempsamp.reward import grounding
from tempsamp.reward.grounding import parse_span, parse_span_eval

HUGE = "9" * 400  # a number beyond float range: float() gives inf

CORPUS = [
    # ---- tagged, the prompt's own format -------------------------------------------------------
    ("<answer> 12.5 to 17.8 </answer>", (12, 18)),  # round half to even: 12.5 -> 12
    ("<answer>2.5 to 3.5</answer>", (2, 4)),  # half to even both ways: 2.5 -> 2, 3.5 -> 4
    ("<answer>0.5 to 1.5</answer>", (0, 2)),
    ("<answer>16.5 to 17.5</answer>", (16, 18)),
    ("<answer>12.51 to 13.49</answer>", (13, 13)),
    ("<answer>12.5000000000000001 to 14</answer>", (12, 14)),  # float("12.50..01") == 12.5 -> 12
    ("<ANSWER> 10 TO 20 </ANSWER>", (10, 20)),  # lowercased first, so the tags and `to` match
    ("<answer> 5 to 3 </answer>", (5, 3)),  # reversed: kept as written (IoU 0 later)
    ("<think>maybe 1 to 2</think> <answer>30 to 40</answer>", (30, 40)),  # only the answer content
    ("<answer>1 to 2</answer> <answer>5 to 6</answer>", (1, 2)),  # first tag
    ("<answer>\n3 to 8\n</answer>", (3, 8)),  # line breaks next to the tags are absorbed by \s*
    ("<answer></answer> 3 to 4", None),  # empty content IS a match: nothing to parse, no fallback
    ("<answer>7 seconds</answer> then 1 to 2", None),  # one number in the content; whole reply unused
    ("<answer>7</answer>", None),  # one number: an odd count drops the last
    ("<answer>1 to 2", (1, 2)),  # unclosed tag: the whole reply
    # ---- answer tag spanning a line break (no DOTALL) -----------------------------------------
    ("<answer>4\nto 9</answer>", (4, 9)),  # content has a line break: no match; whole reply, `\s+to\s+`
    ("<think>0 to 1</think><answer>4\nto 9</answer>", (0, 1)),  # whole reply: its FIRST pair is the think's
    ("<answer>a\nb</answer><answer>5 to 6</answer>", (5, 6)),  # first tag fails, the search goes on
    # ---- clock times --------------------------------------------------------------------------
    ("The event happens in 00:05 - 00:12 seconds.", (5, 12)),
    ("1:30 to 2:45", (90, 165)),
    ("01:02:03.5 to 01:02:10", (3724, 3730)),  # 3723.5 -> 3724 (even)
    ("0:00:05.5 - 0:00:08.5", (6, 8)),  # 5.5 -> 6, 8.5 -> 8
    ("1:00:00.25 - 1:00:30", (3600, 3630)),
    ("Start: 00:10\nEnd: 00:20", (10, 20)),  # untagged, on separate lines: clock times anywhere
    ("00:01, 00:02, 00:03", (1, 2)),  # odd count: the last dropped, first pair (1, 2)
    ("at 00:05 - 17", (5, 17)),  # one clock time is dropped; then `A - B` finds "05 - 17"
    ("00:05s to 00:12s", (0, 0)),  # `05s`: no \b, no clock time; `A to B`: "05s" is no A; numbers: 00, 00
    ("00:05.5s to 00:09", (5, 9)),  # `.5s` fails \b, so the time backs off to "00:05" (\b before ".")
    ("from 1:5 to 1:9", (5, 1)),  # `1:5` is no time (2-digit seconds); `A to B` reads "5 to 1"
    ("123:45 to 200:00", (45, 200)),  # 3-digit leading field: no times; "45 to 200" (`:` stops A/B)
    ("99:59 to 100:00", (59, 100)),  # one time (99:59) dropped; "59 to 100"
    ("time_00:05 to 00:09", (5, 0)),  # `_` is a word char: no \b, one time; "05 to 00"
    # ---- A - B, then A to B --------------------------------------------------------------------
    ("<answer>12.5 - 17.8s</answer>", (12, 18)),  # `A - B` has no word boundaries: B = 17.8
    ("12.5-17.8", (12, 18)),  # spaces around `-` optional
    ("1\t-\t2", (1, 2)),
    ("12 \n- 17", (12, 17)),  # \s spans the line break
    ("1 to 2 and 12 - 17", (12, 17)),  # `A - B` anywhere beats an earlier `A to B`
    ("5 to 10.5 to 20", (5, 10)),  # first `to` match; 10.5 -> 10
    ("x1.5 to 2.5y", (2, 2)),  # no \b in rule 2; 1.5 -> 2, 2.5 -> 2
    ("<answer>.5 to 3.5</answer>", (5, 4)),  # `.5` reads 5 (A starts at a digit); 3.5 -> 4
    ("3.7.9 - 12", (8, 12)),  # "3.7" is followed by `.`, not `-`; the match starts at 7: "7.9 - 12"
    ("12. - 15", (12, 15)),  # A = "12." (digits, `.`, no digits)
    ("4.5e2 to 6", (2, 6)),  # "4.5" is followed by `e`; A = the "2" after it
    ("<answer>1,000 to 2,000</answer>", (0, 2)),  # A = "000" (after the comma), B = "2" (comma stops it)
    ("-5 to -3", (5, 3)),  # no `A - B` (no digit before a `-`); B can't start with `-`; numbers 5, 3
    ("between 5-10 sec", (5, 10)),
    ("<answer>\u0663 to \u0664</answer>", (3, 4)),  # Arabic-Indic digits are \d and float() reads them
    # ---- `to` needs whitespace on both sides; unit suffixes --------------------------------------
    ("12to17", None),  # no `A to B`; no \b between 2 and t: no standalone numbers at all
    ("12 to17", None),  # no space after `to`; "17" follows a letter: one standalone number only
    ("<answer>12.5s to 17.8s</answer>", (12, 17)),  # no `A to B` (letter before `to`); standalone 12, 17
    ("<answer>12.5 – 17.8</answer>", (12, 18)),  # en dash is not `-`: standalone numbers 12.5, 17.8
    # ---- standalone numbers -------------------------------------------------------------------
    ("take 3 and 9", (3, 9)),
    ("clip2 starts at 4 and ends at 9", (4, 9)),  # the 2 in "clip2" has no \b before it
    ("abc 007 def 0012", (7, 12)),
    ("from 10.0 until 20.0 (duration 30)", (10, 20)),  # numbers two by two: first pair (10.0, 20.0)
    ("no numbers here", None),
    ("", None),
    # ---- huge numbers ---------------------------------------------------------------------------
    ("1" + "0" * 308 + " to 5", (1e308, 5)),  # 309 digits but finite: rounded like any number
    ("1 to 2, " + HUGE + " to 3", (1, 2)),  # inf in a later pair: never rounded, no effect
    (HUGE, None),  # one number
]
# Replies whose first pair holds inf: the original raises OverflowError; we score them as unparsed.
OVERFLOW = [HUGE + " to 1", "<answer>1 - " + HUGE + "</answer>", "9" * 100_000 + " 1"]


def _f(span):
    return None if span is None else (float(span[0]), float(span[1]))


@pytest.mark.parametrize("text,span", CORPUS, ids=[repr(t[:40]) for t, _ in CORPUS])
def test_eval_parse_gives_the_original_span(text, span):
    assert parse_span_eval(text) == _f(span)


def test_corpus_is_wide():
    assert len(CORPUS) >= 55
    assert sum(s is None for _, s in CORPUS) >= 8


@pytest.mark.parametrize("text", OVERFLOW, ids=["huge A", "huge B", "100k digits"])
def test_huge_first_pair_is_unparsed(text):
    # Our difference: the original crashes (round(inf)); we report no pair -> failure span, IoU 0.
    assert math.inf in grounding.eval_pair(text)
    assert parse_span_eval(text) is None
    span, used, iou = score_reply(text, (1.0, 5.0), 30.0, "eval")
    assert span is None and used == (40.0, 50.0) and iou == 0.0


def test_failure_span_and_parse_rate():
    gt, dur = (2.0, 8.0), 12.5
    rows = ["<answer>2 to 8</answer>", "12to17", "<answer></answer> 3 to 4", "<answer>7</answer>",
            HUGE + " to 1", "<answer>22.5 to 32.5</answer>"]
    preds = []
    for text in rows:
        span, used, iou = score_reply(text, gt, dur, "eval")
        preds.append(Prediction(key=text, dataset="d", video="v", video_id="v", query="q", gt=gt, duration=dur,
                                text=text, span=span, eval_span=used, iou=iou, parsed=span is not None,
                                parse_mode="eval"))
    assert [p.span for p in preds] == [(2.0, 8.0), None, None, None, None, (22.0, 32.0)]
    for p in preds[1:5]:
        assert p.eval_span == (22.5, 32.5) and p.iou == 0.0  # (duration + 10, duration + 20)
    assert preds[0].iou == 1.0
    # A real pair equal to the rounded failure span still counts as parsed (the original's .py would
    # count it as unparsed: it compares with the ROUNDED failure span).
    assert preds[5].parsed and preds[5].iou == 0.0
    assert dataset_metrics(preds)["parse_rate"] == pytest.approx(100 * 2 / 6)


def test_iou_uses_the_rounded_span():
    gt = (3.0, 7.0)
    want = ((2.0, 8.0), (2.0, 8.0), pytest.approx(4 / 6))  # 2.5 -> 2, 7.5 -> 8: inter 4, union 6
    assert score_reply("<answer>2.5 to 7.5</answer>", gt, 20.0, "eval") == want
    assert score_reply("<answer>3.5 to 6.5</answer>", gt, 20.0, "eval")[2] == pytest.approx(0.5)  # (4, 6) in (3, 7)


def test_adversarial_replies_are_fast():
    replies = [
        "9" * 100_000,  # digit flood: the original's `A - B` regex is cubic here
        "9" * 50_000 + " - " + "1" * 50_000,
        "1." + "1" * 100_000 + "x",
        "<answer>" + " " * 100_000 + "x\ny</answer>",  # the original's tag regex is quadratic here
        "<answer>a" + " " * 100_000 + "b",
        "<answer>a\nb" * 20_000 + "</answer>",
        "<answer>" * 20_000 + "\n</answer>",
        "00:0" * 25_000,
        "1 " * 50_000,
    ]
    for text in replies:
        t = time.perf_counter()
        parse_span_eval(text)
        assert time.perf_counter() - t < 0.5, text[:30]
    t = time.perf_counter()
    assert parse_span_eval("9" * 100_000) is None  # one number
    assert time.perf_counter() - t < 0.5


# The plain (backtracking) regexes of the rules, as RECIPE.md states them. Our linear-time patterns
# must give the same first match; short random strings keep the plain ones fast.
_PLAIN_ANSWER = re.compile(r"<answer>\s*(.*?)\s*</answer>")
_PLAIN_CLOCK = re.compile(r"\b(\d{1,2}:\d{2}:\d{2}(?:\.\d+)?|\d{1,2}:\d{2}(?:\.\d+)?)\b")
_PLAIN_DASH = re.compile(r"(\d+\.?\d*)\s*-\s*(\d+\.?\d*)")
_PLAIN_TO = re.compile(r"(\d+\.?\d*)\s+to\s+(\d+\.?\d*)")
_PIECES = ["<answer>", "</answer>", " ", "\n", "\t", "-", " - ", "to", " to ", ".", ":", "0", "1", "5", "12", "05",
           "123", "s", "a", "_", "\u0663", "\u00a0", "1:5", "00:05", "1:02:03", ".5", "2.5", "9" * 15]


def _groups(m):
    return None if m is None else m.groups()


def test_linear_patterns_match_the_plain_rule_regexes():
    rng = random.Random(16)
    for _ in range(30_000):
        s = "".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 12)))
        m = _PLAIN_ANSWER.search(s)
        assert grounding._eval_answer_content(s) == (m.group(1) if m else None), repr(s)
        assert [m.group(1) for m in grounding._CLOCK.finditer(s)] == _PLAIN_CLOCK.findall(s), repr(s)
        assert _groups(grounding._EV_DASH.search(s)) == _groups(_PLAIN_DASH.search(s)), repr(s)
        assert _groups(grounding._EV_TO.search(s)) == _groups(_PLAIN_TO.search(s)), repr(s)


# Training parse: unchanged (values as pinned before this change; parse_span is not the original eval).
TRAINING = [
    ("<answer> 12.5 to 17.8 </answer>", (12.5, 17.8)),  # no rounding
    ("<answer>12.5s to 17.8s</answer>", (12.5, 17.8)),
    ("12to17", (12.0, 17.0)),
    ("<answer>from 1 to 2, no: 5 to 9</answer>", (5.0, 9.0)),  # last match
    ("<answer>.5 to 3.5</answer>", (0.5, 3.5)),
    ("00:05 - 00:12", (5.0, 0.0)),  # no clock times in training
    ("<answer>4\nto 9</answer>", (4.0, 9.0)),  # DOTALL block
    ("<answer></answer> 3 to 4", None),
]


@pytest.mark.parametrize("text,span", TRAINING)
def test_training_parse_unchanged(text, span):
    assert parse_span(text) == span
    assert score_reply(text, (0.0, 10.0), 30.0, "training")[0] == span
