"""Per-GPU memory plan (tempsamp/placement/memory.py): shapes of the shipped architecture configs, the
estimate's arithmetic, the table `tempsamp plan` prints, and refusal of a config that cannot fit."""

from pathlib import Path

import pytest

from tempsamp.config import load_config
from tempsamp.placement.memory import (GiB, MODEL_CONFIGS, check_memory, find_model_config, format_memory,
                                       kv_bytes_per_token, learner_memory, memory_plan, micro_batch, model_shape,
                                       state_bytes_per_sequence)
from tempsamp.placement.plan import PlacementError

ROOT = Path(__file__).resolve().parents[1]
H20 = ROOT / "jobs" / "configs" / "tempsamp.yaml"
# published parameter counts (Hugging Face model cards: 8.29B, 8.77B; Qwen3.5-4B: 4.54B without the MTP head)
PUBLISHED = {"Qwen2.5-VL-7B-Instruct": 8.29e9, "Qwen3-VL-8B-Instruct": 8.77e9, "Qwen3.5-4B": 4.54e9}


@pytest.fixture(scope="module")
def shapes():
    return {name: model_shape(MODEL_CONFIGS / name) for name in PUBLISHED}


def _cfg(*overrides):
    return load_config(H20, list(overrides), env={})


def test_shipped_configs_have_the_published_sizes(shapes):
    for name, want in PUBLISHED.items():
        s = shapes[name]
        assert abs(s.params_total / want - 1) < 0.005, (name, s.params_total)
        assert 0 < s.params_vision < s.params_root < s.params_total
    q35, q25 = shapes["Qwen3.5-4B"], shapes["Qwen2.5-VL-7B-Instruct"]
    assert (q35.full_attention_layers, q35.linear_attention_layers, q35.tied_embeddings) == (8, 24, True)
    assert (q25.full_attention_layers, q25.linear_attention_layers, q25.tied_embeddings) == (28, 0, False)
    # Qwen3.5-4B per sequence: 24 Gated-DeltaNet layers x (32 heads x 128 x 128 float32 + conv state)
    # = 51,511,296 bytes, as an independent vLLM cache profile counts it
    assert state_bytes_per_sequence(q35, 2, 1) == 51_511_296
    assert kv_bytes_per_token(q35, 2, 1) == 8 * 2 * 4 * 256 * 2
    assert kv_bytes_per_token(q25, 2, 2) == 28 * 2 * 2 * 128 * 2  # kv heads split over TP 2


def test_find_model_config_prefers_the_model_folder_then_the_shipped_one(tmp_path):
    assert find_model_config("/data/models/Qwen3.5-4B") == MODEL_CONFIGS / "Qwen3.5-4B" / "config.json"
    assert find_model_config("/m/Qwen3-VL-8B") == MODEL_CONFIGS / "Qwen3-VL-8B-Instruct" / "config.json"
    (tmp_path / "Qwen3.5-4B").mkdir()
    (tmp_path / "Qwen3.5-4B" / "config.json").write_text("{}")
    assert find_model_config(str(tmp_path / "Qwen3.5-4B")) == tmp_path / "Qwen3.5-4B" / "config.json"
    with pytest.raises(FileNotFoundError, match="shipped architecture configs: .*Qwen3.5-4B"):
        find_model_config("/data/models/Llama-9B")


def test_learner_estimate_arithmetic(shapes):
    s = shapes["Qwen2.5-VL-7B-Instruct"]
    assert micro_batch(20480, 256, 8, 32768, shared_prefix=False) == (20736, 1, 1)
    assert micro_batch(2000, 64, 8, 32768, shared_prefix=False) == (8 * 2064, 8, 8)
    assert micro_batch(20480, 256, 8, 32768, shared_prefix=True) == (20480 + 8 * 256, 8, 1)
    # shared but not packed (linear attention, flash-attention 2): whole rows, the video once
    assert micro_batch(2000, 64, 8, 32768, shared_prefix=True, packed=False) == (8 * 2064, 8, 1)
    kw = dict(dtype_bytes=2, fsdp=True, micro_batch_tokens=32768, prompt_tokens=2000, response_tokens=64, n=8,
              shared_prefix=False, freeze_vision=True, use_kl=False)
    one, four = (learner_memory(s, ranks=r, gradient_checkpointing=True, **kw) for r in (1, 4))
    for part in ("parameters", "gradients", "AdamW state"):
        assert abs(one.parts[part] / four.parts[part] - 4) < 1e-6  # FSDP2 shards them over the ranks
    trainable = s.params_total - s.params_vision
    assert one.parts["AdamW state"] == 2 * trainable * 2  # two moments in bf16, frozen tower excluded
    act = "activations (largest phase)"
    no_ckpt = learner_memory(s, ranks=4, gradient_checkpointing=False, **kw)
    assert no_ckpt.parts[act] > 5 * four.parts[act]
    # sharing the prefix keeps one copy of the video's pixels instead of one per row
    shared = learner_memory(s, ranks=4, gradient_checkpointing=True, **{**kw, "shared_prefix": True})
    assert shared.parts["video pixels"] * 8 == four.parts["video pixels"]
    assert shared.total < four.total
    # the phases of a step do not overlap: the largest one is counted, not their sum
    assert "logits + saved activations" in four.notes["phases"] and "layer backward" in four.notes["phases"]
    kl = learner_memory(s, ranks=4, gradient_checkpointing=True, **{**kw, "use_kl": True})
    assert kl.parts["reference model"] == four.parts["parameters"]


def test_plan_table_for_the_shipped_configs(shapes):
    for name, shape in shapes.items():
        plan = memory_plan(_cfg(f"model.path=/data/models/{name}"), shape)
        check_memory(plan)  # the 8x H20 recipe fits with every shipped model
        text = format_memory(plan)
        assert name in text and "ckpt+shared *" in text and "max_model_len sequences that fit" in text
        learner, rollout = plan.roles
        assert learner.shortfall == 0 and rollout.shortfall == 0
        assert learner.columns["no-ckpt"].total > 96 * GiB  # without checkpointing 20k-token rows do not fit


def test_a_config_that_cannot_fit_is_refused_naming_the_role(shapes):
    s = shapes["Qwen3-VL-8B-Instruct"]
    with pytest.raises(PlacementError, match=r"role `learner` does not fit: .*short by [0-9.]+ GiB.*activations"):
        check_memory(memory_plan(_cfg("learner.gradient_checkpointing=false"), s))
    with pytest.raises(PlacementError, match=r"role `learner` does not fit.*placement.gpu_memory_gib"):
        check_memory(memory_plan(_cfg("placement.gpu_memory_gib=24"), s))
    with pytest.raises(PlacementError, match=r"role `rollout` does not fit: .*short by [0-9.]+ GiB.*"
                                             r"rollout.gpu_memory_utilization"):
        check_memory(memory_plan(_cfg("rollout.gpu_memory_utilization=0.25"), s))


def test_a_training_run_checks_memory_on_gpu_plans_only():
    from tempsamp.placement.memory import check_run_memory

    q35 = str(MODEL_CONFIGS / "Qwen3.5-4B")
    assert check_run_memory(_cfg(), q35).roles[0].shortfall == 0  # the shipped 8x H20 recipe fits
    with pytest.raises(PlacementError, match=r"role `learner` does not fit"):
        check_run_memory(_cfg("placement.gpu_memory_gib=16"), q35)
    assert check_run_memory(_cfg("placement.gpu_memory_gib=16", "placement.memory_check=false"), q35) is None
    assert check_run_memory(_cfg("placement.gpu_memory_gib=16", "placement.use_gpus=false"), q35) is None


def test_plan_cli_prints_the_memory_table_and_fails_naming_the_role(capsys):
    from tempsamp.cli import main as cli

    assert cli(["plan", "--config", str(H20)]) == 0
    out = capsys.readouterr().out
    assert "memory per GPU (GiB) — Qwen3.5-4B" in out and "KV cache (what is left)" in out
    assert cli(["plan", "--config", str(H20), "placement.gpu_memory_gib=16"]) == 2
    err = capsys.readouterr().err
    assert "role `learner` does not fit" in err and "short by" in err
    with pytest.raises(Exception, match="gpu_memory_gib must be > 0"):
        _cfg("placement.gpu_memory_gib=0")
