"""Sampler and checkpoint selection; the overlapped schedule on the real actor system. The crash ->
resume test with a real SIGKILL is in test_reliability.py."""

import json
import shutil
from pathlib import Path

import pytest

from tempsamp.config import load_config
from tempsamp.trainer import EpochSampler, SamplerState, complete_checkpoints, resolve_resume

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


@pytest.mark.slow
@pytest.mark.ray
def test_max_staleness_one_overlaps_and_records_lag(tiny_models, synth, tmp_path):
    import ray

    from tempsamp.trainer import Trainer, init_ray

    cfg = load_config(DEMO, [f"data.train_files=[{synth['train_jsonl']}]", "algorithm.name=tempsamp",
                             "trainer.max_steps=3", "trainer.max_staleness=1", "trainer.run_name=stale",
                             f"trainer.log_dir={tmp_path}", "rollout.backend=hf", "rollout.max_new_tokens=8",
                             "data.prompts_per_step=2", "rollout.n=2", "checkpoint.save_freq=0",
                             "checkpoint.resume=never"], env={})
    init_ray(num_cpus=2)
    try:
        t = Trainer(cfg, model_dir=tiny_models("qwen2_5_vl"))
        out = t.run()
        decoded = ray.get(t.pools.decode[0].stats.remote())["decoded"]
        t.shutdown()
    finally:
        ray.shutdown()
    assert decoded == 3 * 2  # each video decoded once per step; rollout and learner read the ObjectRef
    assert set(out["stage_shares"]) == {"decode", "rollout", "reward", "learn", "sync"}
    rows = [json.loads(x) for x in (tmp_path / "stale" / "steps.jsonl").read_text().splitlines()]
    # step 1 samples with v0 at v0; later steps were launched before the previous update landed
    assert [r["rollout/weight_version_lag"] for r in rows] == [0, 1, 1]
