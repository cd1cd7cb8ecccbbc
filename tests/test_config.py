import pytest

from tempsamp.config import ConfigError, load_config


def test_defaults_follow_recipe():
    c = load_config(env={})
    assert c.rollout.n == 8 and c.data.prompts_per_step == 16
    assert (c.algorithm.clip_ratio_low, c.algorithm.clip_ratio_high, c.algorithm.clip_ratio_dual) == (0.2, 0.28, 3.0)
    assert c.learner.lr == 1e-6 and c.learner.weight_decay == 0.01 and c.learner.warmup_ratio == 0.05
    assert (c.rollout.temperature, c.rollout.top_p, c.rollout.max_new_tokens) == (1.0, 0.85, 256)
    assert (c.video.fps, c.video.max_frames, c.video.min_pixels, c.video.max_pixels) == (2.0, 768, 4096, 786432)
    assert c.video.total_pixels == 14_680_064 and c.eval.min_pixels == 65_536 and c.eval.max_new_tokens == 512
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
    t = load_config(root / "tempsamp.yaml", env={})
    g = load_config(root / "grpo.yaml", env={})
    assert t.algorithm.gt_injection_enabled() and t.reward.shaping
    assert not g.algorithm.gt_injection_enabled() and not g.reward.shaping
