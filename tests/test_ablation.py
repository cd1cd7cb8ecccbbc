"""The ablation (tempsamp/ablation.py, benchmarks/ablation.py): its statistics, its figure, and the
reproducibility of the in-process path it runs on (two runs with the same seeds log the same numbers,
bit for bit, and their final models evaluate the same)."""

import math

import pytest

from tempsamp.ablation import (AblationError, aggregate, arm_config, compare_runs, markdown_table, run_summary,
                               steps_to, train_and_eval, with_eval)


def _rows(fmt, iou, zero):
    return [{"step": i + 1, "reward/format_rate_no_gt": f, "reward/iou_mean_no_gt": u,
             "reward/raw_score_mean_no_gt": u + 0.1 * f, "adv/zero_groups": z, "time/step_s": 1.0 + i,
             "sample/text": "x"} for i, (f, u, z) in enumerate(zip(fmt, iou, zero))]


def test_steps_to_uses_a_trailing_window():
    rows = _rows([0, 0, 1, 0, 0, 1, 1, 1, 1], [0] * 9, [0] * 9)
    assert steps_to(rows, threshold=0.5, window=1) == 3  # one lucky step counts with no window
    assert steps_to(rows, threshold=0.5, window=5) == 7  # mean of steps 3..7 = 0.6
    assert steps_to(rows, threshold=0.99, window=5) is None


def test_run_summary_and_aggregate_over_seeds():
    a = run_summary(_rows([0.0] * 10 + [0.5] * 10, [0.1] * 10 + [0.3] * 10, [1.0] * 10 + [0.0] * 10))
    assert a["format_last"] == 0.5 and a["iou_last"] == pytest.approx(0.3)
    assert a["score_last"] == pytest.approx(0.35) and a["zero_adv_frac"] == 0.5 and a["steps"] == 20
    assert a["steps_to_format_0.5"] == 15  # steps 11..15 are the first window at 0.5
    b = run_summary(_rows([0.0] * 20, [0.2] * 20, [1.0] * 20))
    assert b["steps_to_format_0.5"] is None
    agg = aggregate([with_eval(a, {"all": {"R1@0.5": 50.0, "mIoU": 40.0, "parse_rate": 100.0}}),
                     with_eval(b, {"all": {"R1@0.5": 0.0, "mIoU": 10.0, "parse_rate": 0.0}})])
    assert agg["seeds"] == 2 and agg["reached"] == 1 and agg["steps_to_format_0.5"] == 15
    assert agg["format_last"][0] == 0.25 and agg["format_last"][1] == pytest.approx(math.sqrt(0.125))  # ddof 1
    assert agg["eval_R1@0.5"] == (25.0, pytest.approx(math.sqrt(1250.0)))
    table = markdown_table({"warm": {"grpo": agg}}, {"warm": 20})
    assert "**Start: warm** (20 steps" in table and "| grpo | 0.250 ± 0.071 |" in table and "15.0 (1/2)" in table
    with pytest.raises(AblationError, match="no step rows"):
        run_summary([])


def test_compare_runs_ignores_times_and_text_and_sees_any_other_difference():
    a = _rows([0.5, 0.25], [0.1, 0.2], [0.0, 1.0])
    b = _rows([0.5, 0.25], [0.1, 0.2], [0.0, 1.0])
    b[1]["time/step_s"], b[1]["sample/text"] = 99.0, "other"
    a[0]["learn/learn_s"], b[0]["learn/learn_s"] = 2.5, 1.9  # seconds
    a[0]["learn/entropy"] = b[0]["learn/entropy"] = float("nan")  # NaN (no GT rows) equals NaN
    assert compare_runs(a, b) == []
    b[1]["reward/iou_mean_no_gt"] = 0.2 + 1e-12  # one ulp-scale difference is a difference
    b[0]["learn/extra"] = 1.0  # so is a key only one run logged
    diffs = compare_runs(a, b)
    assert len(diffs) == 2 and any("reward/iou_mean_no_gt" in d for d in diffs) and any("learn/extra" in d for d in diffs)
    assert compare_runs(a, a[:1]) == ["2 vs 1 steps"]


def test_span_baselines_score_answers_that_ignore_the_video(synth):
    from tempsamp.ablation import span_baselines
    from tempsamp.evaluation.bench import load_bench
    from tempsamp.reward.grounding import temporal_iou

    base = span_baselines(synth["bench_dir"], ["charades-timelens"])
    samples, _ = load_bench(synth["bench_dir"], ["charades-timelens"])
    whole = [temporal_iou((0.0, s.duration), s.gt) for s in samples]
    assert base["whole video"]["mIoU"] == pytest.approx(100 * sum(whole) / len(whole))
    assert 0 < base["whole video"]["mIoU"] < 100 and set(base) == {"whole video", "middle half"}


def test_band_figure_and_bad_arm(tmp_path, synth):
    from tempsamp.plots import PlotError, seed_band_curves

    runs = {"random": {"grpo": [_rows([0, 0, 0], [0, 0, 0], [1, 1, 1])] * 2,
                       "tempsamp": [_rows([0, 0.5, 1], [0, 0.1, 0.2], [0, 0, 0]), _rows([0, 0, 1], [0, 0, 0.1], [0, 0, 0])]},
            "warm": {"grpo": [_rows([0.2, 0.4, 0.6], [0.1, 0.1, 0.2], [0.5, 0.5, 0])]}}
    png = seed_band_curves(runs, [("reward/format_rate_no_gt", "format"), ("adv/zero_groups", "zero")],
                           tmp_path / "bands.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    with pytest.raises(PlotError):
        seed_band_curves({}, [("x", "x")], tmp_path / "none.png")
    with pytest.raises(AblationError, match="unknown arm 'ppo'"):
        arm_config("ppo", synth["train_jsonl"], str(synth["bench_dir"]), 2, 0)


@pytest.mark.slow
def test_in_process_path_is_bit_reproducible(tmp_path, synth, tiny_models):
    """Issue #21 (3): the ablation's path — HF generation on the learner's model, reward stage, learner
    step, in-process greedy eval — run twice with the same seeds gives the same numbers, bit for bit."""
    cfg = arm_config("tempsamp", synth["train_jsonl"], str(synth["bench_dir"]), 2, 0,
                     overrides=["data.prompts_per_step=2", "learner.mini_batches_per_step=2",
                                "rollout.max_new_tokens=12", "eval.max_new_tokens=12"])
    model = tiny_models("qwen2_5_vl")
    runs = [train_and_eval(cfg, model, tmp_path / f"run{i}.jsonl", video_cache={}, eval_max_per_dataset=1)
            for i in range(2)]
    (rows_a, eval_a), (rows_b, eval_b) = runs
    assert len(rows_a) == 2 and all(r["learn/grad_norm"] > 0 for r in rows_a)  # the model really changed
    assert rows_a[1]["learn/gt_logp_per_token"] != rows_a[0]["learn/gt_logp_per_token"]
    assert compare_runs(rows_a, rows_b) == []
    assert [r["sample/text"] for r in rows_a] == [r["sample/text"] for r in rows_b]
    assert eval_a == eval_b and eval_a["all"]["count"] == 3  # one query of each dataset


def test_bad_start_or_start_override_fails_before_any_work(tmp_path):
    from tempsamp.ablation import run_ablation
    from tempsamp.config import ConfigError

    with pytest.raises(AblationError, match="unknown start 'cold'"):
        run_ablation(tmp_path / "a", ["grpo"], ["cold"], 1, {"cold": 1}, 1)
    with pytest.raises(ConfigError, match="learner.lrr"):
        run_ablation(tmp_path / "b", ["grpo"], ["random", "warm"], 1, {"random": 1, "warm": 1}, 1,
                     start_overrides={"warm": ["learner.lrr=1"]})
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()

