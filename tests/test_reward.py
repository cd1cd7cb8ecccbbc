import math

import numpy as np
import pytest

from tempsamp.reward.grounding import grounding_reward, has_format, parse_span, parse_span_eval, temporal_iou
from tempsamp.reward.gt import build_gt_response
from tempsamp.reward.shaping import shaped_scores, transform_rewards


@pytest.mark.parametrize("text,span", [
    ("<answer> 12.5 to 17.8 </answer>", (12.5, 17.8)),
    ("<think>1 to 2</think><answer>3 and 4</answer>", (3.0, 4.0)),
    ("<answer>from 1 to 2, no: 5 to 9</answer>", (5.0, 9.0)),  # last `to` match
    ("<answer>3.5 - 7</answer>", (3.5, 7.0)),
    ("<answer>start 4 end 8 maybe 10</answer>", (4.0, 8.0)),  # first two numbers
    ("no tags 2 to 6", (2.0, 6.0)),  # whole text when no answer block
    ("<answer>9 to 3</answer>", (9.0, 3.0)),  # reversed kept as written
    ("", None), ("<answer></answer>", None), ("just words", None), ("<answer>7</answer>", None),
])
def test_parse_span(text, span):
    assert parse_span(text) == span


@pytest.mark.parametrize("text", [
    "", "x" * 100_000, "<answer>" * 5000, "ünïcödé 🎬 <answer>٣ to ٤</answer>", "\x00\x01\xff",
    "<answer><answer>1 to 2</answer></answer>", "-5 to -3", "01:30 to 02:15", "1e999 to 2e999",
    "9" * 5000 + " to 1", None, 12345,
])
def test_reward_never_raises(text):
    r = grounding_reward(text, (1.0, 4.0))
    assert 0.0 <= r.iou <= 1.0 and r.format in (0.0, 1.0)
    parse_span_eval(text)


def test_parse_is_fast_on_adversarial_output():
    import time

    t = time.perf_counter()
    for text in ("<answer>" * 20000, "<answer>" + "1 " * 50000, "9" * 100000 + " to 1"):
        grounding_reward(text, (1.0, 2.0))
        parse_span_eval(text)
    assert time.perf_counter() - t < 5.0


def test_iou_and_score():
    assert temporal_iou((0, 10), (5, 15)) == pytest.approx(5 / 15)
    assert temporal_iou((0, 1), (2, 3)) == 0.0
    assert temporal_iou((5, 5), (5, 5)) == 0.0  # empty union
    assert temporal_iou((9, 3), (0, 20)) == 0.0  # reversed
    assert temporal_iou(None, (0, 1)) == 0.0
    r = grounding_reward("<answer> 2.00 to 4.00 </answer>", "<answer> 2.0 to 4.0 </answer>")
    assert (r.iou, r.format, r.score) == (1.0, 1.0, pytest.approx(1.1))
    r = grounding_reward("2 to 4", (2.0, 4.0))
    assert r.iou == 1.0 and r.format == 0.0 and r.score == 1.0
    assert grounding_reward("junk", (1.0, 2.0)).score == 0.0


def test_strict_format():
    assert has_format("<answer> 1 to 2 </answer>", strict=True)
    assert not has_format("ok <answer> 1 to 2 </answer>", strict=True)
    assert has_format("ok <answer> 1 to 2 </answer>", strict=False)
    assert not has_format("<answer>no numbers</answer> 1 to 2")


def test_eval_parse_protocol():
    assert parse_span_eval("<answer> 12.6 to 17.4 </answer>") == (13.0, 17.0)  # rounded
    assert parse_span_eval("<ANSWER>1 to 2</ANSWER> <answer>5 to 6</answer>") == (1.0, 2.0)  # first
    assert parse_span_eval("<answer>01:05 - 1:10</answer>") == (65.0, 70.0)
    assert parse_span_eval("<answer>1:00:00 to 1:00:30</answer>") == (3600.0, 3630.0)
    assert parse_span_eval("<answer>4 - 9 or 1 to 2</answer>") == (4.0, 9.0)
    assert parse_span_eval("<answer>\n3 to 8\n</answer>") == (3.0, 8.0)  # line breaks next to the tags are absorbed by \s*: the tag matches
    assert parse_span_eval("nothing") is None
    assert parse_span("<answer>from 1 to 2, no: 5 to 9</answer>") != parse_span_eval("<answer>from 1 to 2, no: 5 to 9</answer>")


def test_shaping_check_values():
    got = transform_rewards([0.0, 0.5, 0.7, 0.8, 1.0])
    assert got == pytest.approx([0.0868, 0.596, 0.739, 0.800, 0.8018], abs=6e-4)
    # monotone, continuous at the threshold
    x = np.linspace(0, 1, 1001)
    y = transform_rewards(x)
    assert np.all(np.diff(y) >= 0)
    assert transform_rewards(0.8 - 1e-9) == pytest.approx(0.8, abs=1e-6)
    # alpha changes the bottom only
    assert transform_rewards(1.0, alpha=3.0) == pytest.approx(transform_rewards(1.0))
    assert transform_rewards(0.0, alpha=3.0) != pytest.approx(transform_rewards(0.0))
    with pytest.raises(ValueError):
        transform_rewards(0.5, alpha=0)


def test_shaped_scores_gt_row():
    assert shaped_scores([1.0], [1.0], shaping=False)[0] == pytest.approx(1.1)
    assert shaped_scores([1.0], [1.0], shaping=True)[0] == pytest.approx(0.9018, abs=1e-4)
    assert shaped_scores([0.0], [0.0], shaping=True)[0] == pytest.approx(0.0868, abs=1e-4)


def test_gt_response_format():
    assert build_gt_response("<answer> 98.0 to 103.0 </answer>") == "<answer> 98.00 to 103.00 </answer>"
    assert build_gt_response((1, 2.345)) == "<answer> 1.00 to 2.35 </answer>"
    assert build_gt_response('{"time": [3, 4.5]}') == "<answer> 3.00 to 4.50 </answer>"
    assert math.isclose(grounding_reward(build_gt_response((3.0, 4.5)), (3.0, 4.5)).score, 1.1)
