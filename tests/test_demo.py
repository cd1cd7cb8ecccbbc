"""The README's demo, reduced (HF rollout backend, 2 steps per algorithm): both algorithms run on
the full actor system, the plot and table are written, and the curves say what they should."""

import json

import pytest

from tempsamp.config import load_config
from tempsamp.config import DEMO_CONFIG
from tempsamp.reward.shaping import shaped_scores


def _assert_one_perfect_gt_row_per_group(steps: list[dict]) -> None:
    """TempSamp's GT injection as the step log shows it: with exactly one GT row per group of n, every all-rows
    mean is (GT row + (n - 1) x on-policy mean) / n, so n x mean - (n - 1) x mean_no_gt is the GT row's value:
    IoU 1, format 1, score = the (shaped) reward of a perfect answer."""
    cfg = load_config(DEMO_CONFIG, ["algorithm.name=tempsamp"], env={})
    n, rw = cfg.rollout.n, cfg.reward
    perfect = float(shaped_scores([1.0], [1.0], rw.format_weight, True, rw.shaping_threshold, rw.shaping_alpha)[0])
    for r in steps:
        assert r["batch/rows"] == cfg.data.prompts_per_step * n
        gt = {k: n * r[f"reward/{k}"] - (n - 1) * r[f"reward/{k}_no_gt"]
              for k in ("iou_mean", "format_rate", "score_mean")}
        assert gt == pytest.approx({"iou_mean": 1.0, "format_rate": 1.0, "score_mean": perfect}), (r["step"], gt)


@pytest.mark.slow
@pytest.mark.ray
def test_demo_quick(tmp_path):
    import ray

    from tempsamp.demo import run_demo

    try:
        assert run_demo(str(tmp_path), quick=True, backend="hf") == 0
    finally:
        ray.shutdown()
    assert (tmp_path / "demo_curves.png").stat().st_size > 10_000
    # the whole loop: each arm's final checkpoint was exported and evaluated on the held-out bench videos
    ev = (tmp_path / "demo_eval.md").read_text()
    for arm in ("grpo", "tempsamp"):
        assert (tmp_path / "checkpoints" / arm / "global_step_2" / "actor" / "config.json").exists()
        m = json.loads((tmp_path / "eval" / arm / "metrics.json").read_text())["datasets"]
        assert sum(m[ds]["count"] for ds in m) == 6  # 2 videos x 3 datasets
        assert f"| {arm} | all |" in ev and f"| {arm} | charades-timelens |" in ev
    table = (tmp_path / "demo_table.md").read_text()
    assert "grpo score" in table and "tempsamp score" in table
    logs = {a: [json.loads(x) for x in (tmp_path / "logs" / f"demo-{a}" / "steps.jsonl").read_text().splitlines()]
            for a in ("grpo", "tempsamp")}
    assert [r["step"] for r in logs["grpo"]] == [1, 2]
    # from a random init, vanilla GRPO has nothing to learn: every group has zero advantage
    assert all(r["adv/zero_groups"] == 1.0 for r in logs["grpo"])
    # TempSamp's GT rows carry the signal: their log-probability rises step over step
    t = logs["tempsamp"]
    assert t[-1]["learn/gt_logp_per_token"] > t[0]["learn/gt_logp_per_token"]
    _assert_one_perfect_gt_row_per_group(t)
