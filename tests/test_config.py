import ast
from pathlib import Path

import pytest

from tempsamp.config import (ENV_VARS, PRESETS, ConfigError, Recipe, describe_recipe, effective_recipe, load_config,
                             parse_dataset_list)

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_follow_recipe():
    c = load_config(env={})
    assert c.rollout.n == 8 and c.data.prompts_per_step == 16
    assert (c.algorithm.clip_ratio_low, c.algorithm.clip_ratio_high, c.algorithm.clip_ratio_dual) == (0.2, 0.28, 3.0)
    assert c.learner.lr == 1e-6 and c.learner.weight_decay == 0.01 and c.learner.warmup_ratio == 0.05
    assert (c.rollout.temperature, c.rollout.top_p, c.rollout.max_new_tokens) == (1.0, 0.85, 256)
    assert (c.video.fps, c.video.max_frames, c.video.min_pixels, c.video.max_pixels) == (2.0, 768, 4096, 786432)
    # eval budgets: 0 = the original's per-family token budgets (tests/test_eval_protocol.py)
    assert c.video.total_pixels == 14_680_064 and c.eval.min_pixels == 0 and c.eval.max_new_tokens == 512
    assert (c.reward.shaping_threshold, c.reward.shaping_alpha, c.reward.format_weight) == (0.8, 1.0, 0.1)
    assert not c.algorithm.use_kl and c.checkpoint.save_freq == 20
    assert not c.algorithm.gt_injection_enabled()
    assert load_config(overrides=["algorithm.name=tempsamp"], env={}).algorithm.gt_injection_enabled()


def test_yaml_env_and_override_precedence(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("reward:\n  shaping: false\n  shaping_alpha: 2.0\nlearner:\n  lr: 1.0e-5\n")
    env = {"GTPO_REWARD_SHAPING": "true", "GTPO_REWARD_SHAPING_ALPHA": "3.5",
           "TIMELENS_TRAIN_FILES": "a.jsonl, b.jsonl", "TIMELENS_MODEL_PATH": "/m",
           "TIMELENS_VIDEO_SOURCE_MODE": "preprocessed_only", "TIMELENS_USE_PREPROCESSED": "1",
           "TIMELENS_PREPROCESSED_VIDEO_DIR": "/cache", "GTPO_REWARD_SHAPING_THRESHOLD": "0.7"}
    c = load_config(p, ["reward.shaping_alpha=4", "learner.betas=[0.9, 0.95]"], env=env)
    assert c.reward.shaping is True and c.reward.shaping_alpha == 4.0 and c.reward.shaping_threshold == 0.7
    assert c.learner.lr == 1e-5 and c.learner.betas == (0.9, 0.95)
    assert c.data.train_files == ["a.jsonl", "b.jsonl"] and c.model.path == "/m"
    assert c.data.use_preprocessed and c.data.video_source_mode == "preprocessed_only"
    assert c.data.preprocessed_video_dir == "/cache"


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("data:\n  train_filez: [x]\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*unknown field `train_filez`.*data"):
        load_config(p, env={})


def test_wrong_type_in_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("rollout:\n  n: eight\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*Expected `int`.*rollout\.n"):
        load_config(p, env={})


def test_bad_overrides_and_env():
    with pytest.raises(ConfigError, match=r"unknown key `algorithm\.nam`"):
        load_config(overrides=["algorithm.nam=grpo"], env={})
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        load_config(overrides=["algorithm.name"], env={})
    with pytest.raises(ConfigError, match="algorithm.name"):
        load_config(overrides=["algorithm.name=ppo"], env={})
    with pytest.raises(ConfigError, match="env GTPO_REWARD_SHAPING: expected a boolean"):
        load_config(env={"GTPO_REWARD_SHAPING": "maybe"})
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("/nonexistent.yaml", env={})


def test_shipped_configs_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "jobs" / "configs"
    files = sorted(root.glob("*.yaml"))
    assert {f.stem for f in files} >= {"grpo", "tempsamp", "demo"}
    for f in files:
        load_config(f, env={})
    t = effective_recipe(load_config(root / "tempsamp.yaml", env={}))
    g = effective_recipe(load_config(root / "grpo.yaml", env={}))
    assert t.gt_injection and t.shaping and not t.overrides
    assert not g.gt_injection and not g.shaping and not g.overrides
    # the demo runs both algorithms from one file by `algorithm.name=` alone: it must not pin a component
    for algo in ("grpo", "tempsamp"):
        d = effective_recipe(load_config(root / "demo.yaml", [f"algorithm.name={algo}"], env={}))
        assert (d.gt_injection, d.shaping) == (algo == "tempsamp",) * 2 and not d.overrides


# ---- presets: algorithm.name decides GT injection + shaping unless a key is set explicitly ----

def _rc(overrides=(), env=None, path=None) -> Recipe:
    return effective_recipe(load_config(path, list(overrides), env=env or {}))


def test_presets_table():
    assert PRESETS == {"grpo": {"gt_injection": False, "shaping": False},
                       "tempsamp": {"gt_injection": True, "shaping": True}}


def test_tempsamp_preset_turns_both_on():
    rc = _rc(["algorithm.name=tempsamp"])
    assert rc.name == "tempsamp" and rc.gt_injection and rc.shaping and rc.overrides == ()
    assert load_config(overrides=["algorithm.name=tempsamp"], env={}).algorithm.gt_injection_enabled()


def test_grpo_preset_turns_both_off():
    rc = _rc(["algorithm.name=grpo"])
    assert not rc.gt_injection and not rc.shaping and rc.overrides == ()
    assert _rc() == rc  # grpo is the default
    assert not load_config(env={}).algorithm.gt_injection_enabled()


def test_explicit_keys_win_over_the_preset():
    rc = _rc(["algorithm.name=tempsamp", "reward.shaping=false"])
    assert rc.gt_injection and not rc.shaping and rc.overrides == ("reward.shaping",)
    rc = _rc(["algorithm.name=tempsamp", "algorithm.use_gt_injection=false"])
    assert not rc.gt_injection and rc.shaping and rc.overrides == ("algorithm.use_gt_injection",)
    rc = _rc(["algorithm.name=grpo", "algorithm.use_gt_injection=true", "reward.shaping=true"])
    assert rc.gt_injection and rc.shaping and rc.overrides == ("algorithm.use_gt_injection", "reward.shaping")
    # explicit value equal to the preset: no departure to report
    assert _rc(["algorithm.name=tempsamp", "reward.shaping=true"]).overrides == ()


def test_explicit_key_in_yaml_wins(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("algorithm:\n  name: tempsamp\nreward:\n  shaping: false\n")
    rc = _rc(path=p)
    assert rc.gt_injection and not rc.shaping
    p.write_text("algorithm:\n  name: tempsamp\nreward:\n  shaping: null\n")  # null = follow the preset
    assert _rc(path=p).shaping


def test_env_gtpo_reward_shaping_wins_over_the_preset():
    assert not _rc(["algorithm.name=tempsamp"], env={"GTPO_REWARD_SHAPING": "0"}).shaping
    assert _rc(["algorithm.name=grpo"], env={"GTPO_REWARD_SHAPING": "1"}).shaping
    # ... and a dotted override wins over the env var
    assert _rc(["algorithm.name=grpo", "reward.shaping=false"], env={"GTPO_REWARD_SHAPING": "1"}).shaping is False


def test_reward_options_follow_the_recipe():
    from tempsamp.algo.batch import reward_options

    cfg = load_config(overrides=["algorithm.name=tempsamp", "reward.shaping=false", "reward.shaping_alpha=2",
                                 "algorithm.gt_index=0", "rollout.n=4"], env={})
    assert reward_options(cfg) == dict(n=4, gt_injection=True, gt_index=0, format_weight=0.1, strict_format=False,
                                       shaping=False, shaping_threshold=0.8, shaping_alpha=2.0, adv_eps=1e-6)
    assert reward_options(load_config(overrides=["algorithm.name=tempsamp"], env={}))["shaping"] is True
    assert reward_options(load_config(env={}))["gt_injection"] is False


def test_describe_recipe():
    t = describe_recipe(load_config(overrides=["algorithm.name=tempsamp"], env={}))
    assert t == ("recipe: tempsamp — GT injection on (slot -1), shaping on (threshold 0.8, alpha 1.0), "
                 "loss token-mean, clip 0.2/0.28 (dual 3.0), no KL, no rollout correction")
    g = describe_recipe(load_config(env={}))
    assert g == ("recipe: grpo — GT injection off, shaping off, loss token-mean, clip 0.2/0.28 (dual 3.0), no KL, "
                 "no rollout correction")
    # rollout correction: auto follows the schedule (tis once rollouts may lag), explicit wins
    stale = describe_recipe(load_config(overrides=["trainer.max_staleness=1"], env={}))
    assert stale.endswith("no KL, rollout correction tis (cap 2.0)")
    assert describe_recipe(load_config(overrides=["trainer.max_staleness=1", "algorithm.rollout_correction=none"],
                                       env={})).endswith("no rollout correction")
    assert "rollout correction mis (sequence, ratio in [0.5, 2.0])" in describe_recipe(
        load_config(overrides=["algorithm.rollout_correction=mis", "algorithm.mis_level=sequence"], env={}))
    assert describe_recipe(load_config(overrides=["algorithm.filter_groups=true"], env={})).endswith(
        "filter zero-variance groups")
    with pytest.raises(ConfigError, match="mis_low / mis_high must bracket 1"):
        load_config(overrides=["algorithm.mis_low=1.5"], env={})
    a = describe_recipe(load_config(overrides=["algorithm.name=tempsamp", "reward.shaping=false",
                                               "algorithm.use_kl=true", "algorithm.loss_agg_mode=seq-mean-token-mean"],
                                    env={}))
    assert "GT injection on" in a and "shaping off" in a and "KL low_var_kl (coef 0.01)" in a
    assert "loss seq-mean-token-mean" in a and a.endswith("differs from the tempsamp preset by reward.shaping")
    assert "\n" not in a


# ---- TEMPSAMP_* env vars are config keys ----

@pytest.mark.parametrize("var,value,key,want", [
    ("TEMPSAMP_FORCE_GLOO", "1", "sync.backend", "gloo"),
    ("TEMPSAMP_SPILL_DIR", "/fast/spill", "trainer.spill_dir", "/fast/spill"),
    ("TEMPSAMP_METRICS_PORT", "9123", "trainer.metrics_port", 9123),
    ("TEMPSAMP_VLLM_KEEP_PREPACK", "1", "rollout.vllm_keep_prepack", True),
])
def test_tempsamp_env_vars_map_to_keys(var, value, key, want):
    assert ENV_VARS[var][0] == key
    section, name = key.split(".")

    def get(cfg):
        return getattr(getattr(cfg, section), name)

    default = get(load_config(env={}))
    assert default != want
    assert get(load_config(env={var: value})) == want
    # a dotted override still wins over the env var
    assert get(load_config(overrides=[f"{key}={default}"], env={var: value})) == default


def test_tempsamp_env_var_defaults_and_edge_values():
    c = load_config(env={})
    assert (c.sync.backend, c.trainer.spill_dir, c.trainer.metrics_port, c.rollout.vllm_keep_prepack) == \
        ("auto", "", 0, False)
    assert load_config(env={"TEMPSAMP_FORCE_GLOO": "0"}).sync.backend == "auto"  # 0 sets nothing
    assert load_config(None, ["sync.backend=nccl"], env={"TEMPSAMP_FORCE_GLOO": "0"}).sync.backend == "nccl"
    assert load_config(env={"TEMPSAMP_VLLM_KEEP_PREPACK": "0"}).rollout.vllm_keep_prepack is False
    with pytest.raises(ConfigError, match="env TEMPSAMP_METRICS_PORT"):
        load_config(env={"TEMPSAMP_METRICS_PORT": "eighty"})
    with pytest.raises(ConfigError, match="env TEMPSAMP_FORCE_GLOO: expected a boolean"):
        load_config(env={"TEMPSAMP_FORCE_GLOO": "sure"})


def test_original_env_vars_still_listed():
    assert {"TIMELENS_MODEL_PATH", "TIMELENS_TRAIN_FILES", "TIMELENS_USE_PREPROCESSED", "TIMELENS_VIDEO_SOURCE_MODE",
            "TIMELENS_PREPROCESSED_VIDEO_DIR", "BENCH_DIR", "DATASETS", "GTPO_REWARD_SHAPING",
            "GTPO_REWARD_SHAPING_THRESHOLD", "GTPO_REWARD_SHAPING_ALPHA"} <= set(ENV_VARS)
    assert load_config(env={"DATASETS": "charades qvhighlights.json"}).eval.datasets == \
        ["charades-timelens", "qvhighlights-timelens"]


def test_readme_lists_every_env_var():
    readme = (ROOT / "README.md").read_text()
    for var, (key, _) in ENV_VARS.items():
        assert f"`{var}`" in readme or var.startswith("GTPO_REWARD_SHAPING_"), var
        assert f"`{key}`" in readme or key.startswith("reward.shaping_"), key


# ---- cross-key check ----

def test_max_model_len_must_hold_prompt_plus_response():
    with pytest.raises(ConfigError, match=r"rollout\.max_model_len \(2048\) must be >= data\.max_prompt_length "
                                          r"\(20480\) \+ rollout\.max_new_tokens \(256\) = 20736"):
        load_config(overrides=["rollout.max_model_len=2048"], env={})
    with pytest.raises(ConfigError, match=r"max_model_len \(22528\).*max_new_tokens \(2049\) = 22529"):
        load_config(overrides=["rollout.max_new_tokens=2049"], env={})
    c = load_config(overrides=["rollout.max_new_tokens=2048"], env={})  # exactly fits
    assert c.rollout.max_model_len == c.data.max_prompt_length + c.rollout.max_new_tokens
    c = load_config(overrides=["rollout.max_model_len=4096", "data.max_prompt_length=3840"], env={})
    assert c.data.max_prompt_length == 3840


def test_max_model_len_check_names_the_file(tmp_path):
    p = tmp_path / "small.yaml"
    p.write_text("rollout:\n  max_model_len: 1000\n")
    with pytest.raises(ConfigError, match=r"small\.yaml.*rollout\.max_model_len \(1000\)"):
        load_config(p, env={})


# ---- removed knobs ----

@pytest.mark.parametrize("key,value", [("data.val_files", "[a.jsonl]"), ("algorithm.exclude_gt_from_metrics", "true"),
                                       ("placement.gpu_memory_gb", "96"), ("sync.checksum", "true"),
                                       ("trainer.seed", "1")])
def test_removed_keys_are_errors(tmp_path, key, value):
    with pytest.raises(ConfigError, match=rf"`{key}` was removed: "):
        load_config(overrides=[f"{key}={value}"], env={})
    section, name = key.split(".")
    p = tmp_path / "old.yaml"
    p.write_text(f"{section}:\n  {name}: {value}\n")
    with pytest.raises(ConfigError, match=rf"old\.yaml: `{key}` was removed"):
        load_config(p, env={})


# ---- config is the bottom layer ----

def test_config_imports_nothing_from_tempsamp():
    src = ROOT / "tempsamp" / "config.py"
    bad = []
    for node in ast.walk(ast.parse(src.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").split(".")[0] == "tempsamp"):
            bad.append(f"line {node.lineno}: from {'.' * node.level}{node.module or ''} import ...")
        elif isinstance(node, ast.Import):
            bad += [f"line {node.lineno}: import {a.name}" for a in node.names if a.name.split(".")[0] == "tempsamp"]
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
                "import_module", "__import__"):
            bad.append(f"line {node.lineno}: dynamic import")
    assert not bad, bad


def test_one_dataset_list_parser():
    from tempsamp.evaluation import bench

    assert bench.parse_dataset_list is parse_dataset_list
    assert parse_dataset_list("charades, activitynet-timelens qvhighlights-timelens.json") == [
        "charades-timelens", "activitynet-timelens", "qvhighlights-timelens"]
    assert parse_dataset_list(None) == list(bench.DEFAULT_DATASETS) == load_config(env={}).eval.datasets


def test_cache_mode_from_data_config():
    from tempsamp.data.cache import cache_mode

    assert cache_mode(load_config(env={}).data) == "realtime_only"  # use_preprocessed off: cache never touched
    on = load_config(env={"TIMELENS_USE_PREPROCESSED": "1", "TIMELENS_VIDEO_SOURCE_MODE": "preprocessed_only"})
    assert cache_mode(on.data) == "preprocessed_only"
    assert cache_mode(load_config(overrides=["data.use_preprocessed=true"], env={}).data) == "prefer_preprocessed"
    off = load_config(overrides=["data.use_preprocessed=false", "data.video_source_mode=preprocessed_only"], env={})
    assert cache_mode(off.data) == "realtime_only"


@pytest.mark.parametrize("override,match", [
    ("algorithm.tis_cap=0", "algorithm.tis_cap must be > 0"),
    ("rollout.temperature=0", "rollout.temperature must be > 0"),
    ("algorithm.mis_high=0.9", "mis_low / mis_high must bracket 1"),
    ("trainer.preempt_grace_s=-1", r"trainer.preempt_grace_s must be >= 0 \(got -1.0\)"),
    ("trainer.max_learner_restarts=-1", r"trainer.max_learner_restarts must be >= 0 \(got -1\)"),
    ("sync.bucket_mb=-1", r"sync.bucket_mb must be >= 0 \(0 = the backend's measured default\), got -1"),
    ("learner.lr=-1e-6", r"learner.lr must be > 0 \(got -1e-06\)"),
    ("learner.warmup_ratio=1", r"learner.warmup_ratio must be within \[0, 1\) \(got 1.0\)"),
    ("rollout.top_p=0", r"rollout.top_p must be within \(0, 1\]"),
    ("rollout.n=0", r"rollout.n and data.prompts_per_step must be >= 1 \(got 0 and"),
])
def test_range_rules_are_refused_with_the_key_named(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(overrides=[override], env={})
