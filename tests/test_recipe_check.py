"""The in-process recipe check (no Ray): same seeds and start for both algorithms; GRPO from a random
init sees only zero advantages (no update), TempSamp's injected GT row carries the signal."""

import json
import math

import pytest

@pytest.mark.slow
def test_recipe_check_short(tmp_path, capsys):
    from tempsamp.recipe_check import run_recipe_check

    summary = run_recipe_check(str(tmp_path), steps=3, n_train=8, overrides=["algorithm.filter_max_rounds=1",
                                                                            "rollout.max_new_tokens=12"])
    out = capsys.readouterr().out
    assert "step |" in out and "grpo" in out and "grpo+filter" in out and "tempsamp" in out  # three arms
    grpo = [json.loads(x) for x in (tmp_path / "grpo.jsonl").read_text().splitlines()]
    filt = [json.loads(x) for x in (tmp_path / "grpo+filter.jsonl").read_text().splitlines()]
    ts = [json.loads(x) for x in (tmp_path / "tempsamp.jsonl").read_text().splitlines()]
    assert len(grpo) == len(filt) == len(ts) == 3
    for r in filt:  # random init: every group ties, so dynamic sampling draws once more and still keeps none
        assert r["filter/kept_groups"] == 0.0 and r["filter/rounds"] == 1.0 and r["learn/grad_norm"] == 0.0
    for r in grpo:  # random init: nothing parses, every group ties -> zero advantage, zero gradient
        assert r["reward/format_rate_no_gt"] == 0.0
        assert r["adv/zero_groups"] == 1.0
        assert r["learn/grad_norm"] == 0.0
        assert math.isnan(r["learn/gt_logp_per_token"])
    for r in ts:
        assert r["adv/zero_groups"] == 0.0 and r["adv/max"] > 1.0  # the GT row of each group
        assert r["reward/format_rate"] > r["reward/format_rate_no_gt"]  # GT rows are well-formed
    assert ts[-1]["learn/gt_logp_per_token"] > ts[0]["learn/gt_logp_per_token"] + 0.5
    assert summary["tempsamp"]["learn/gt_logp_per_token"]["max"] == max(r["learn/gt_logp_per_token"] for r in ts)
    assert (tmp_path / "summary.json").exists()


def test_recipe_check_bad_override_fails_before_any_work(tmp_path):
    from tempsamp.config import ConfigError
    from tempsamp.recipe_check import run_recipe_check

    with pytest.raises(ConfigError, match="learner.lrr"):
        run_recipe_check(str(tmp_path / "out"), steps=1, overrides=["learner.lrr=1"])
    assert not (tmp_path / "out").exists()
