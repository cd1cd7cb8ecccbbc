"""Sampler and checkpoint selection. The overlapped schedule on the real actor system is tested on vLLM
engines in test_trainer_vllm.py; the crash -> resume test with a real SIGKILL is in test_reliability.py."""

from pathlib import Path

import pytest

from tempsamp.config import load_config
from tempsamp.data.sampler import EpochSampler, SamplerState
from tempsamp.learner.checkpoint import complete_checkpoints, resolve_resume

DEMO = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "demo.yaml"


def test_sampler_is_seeded_and_resumable():
    a = EpochSampler(10, 3, seed=5)
    seq = [a.next() for _ in range(7)]
    assert [e for e, _ in seq] == [0, 0, 0, 1, 1, 1, 2]  # 3 batches per epoch, last partial dropped
    assert sorted(i for _, b in seq[:3] for i in b) == sorted(set(i for _, b in seq[:3] for i in b))
    b = EpochSampler(10, 3, seed=5, state=SamplerState(epoch=0, index=9))  # exactly at an epoch boundary
    assert b.next() == seq[3]
    with pytest.raises(ValueError, match="fewer than data.prompts_per_step"):
        EpochSampler(2, 3, seed=0)


def test_resume_picks_last_complete_checkpoint(tmp_path):
    for s in (2, 4):
        (tmp_path / f"global_step_{s}").mkdir()
        (tmp_path / f"global_step_{s}" / "COMPLETE").write_text("x")
    (tmp_path / "global_step_6").mkdir()  # crashed before COMPLETE
    (tmp_path / "global_step_8.tmp").mkdir()  # crashed while writing
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["global_step_2", "global_step_4"]
    cfg = load_config(None, [f"checkpoint.output_dir={tmp_path}"], env={})
    assert resolve_resume(cfg).name == "global_step_4"
    cfg = load_config(None, [f"checkpoint.output_dir={tmp_path}", "checkpoint.resume=never"], env={})
    assert resolve_resume(cfg) is None
    cfg = load_config(None, [f"checkpoint.resume={tmp_path / 'global_step_6'}"], env={})
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        resolve_resume(cfg)
