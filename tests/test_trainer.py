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


def _group(key, adv, L=3):
    import numpy as np

    from tempsamp.algo.batch import GroupBatch

    n = len(adv)
    return GroupBatch(key=key, prompt_text=f"p{key}", video=f"v{key}", response_ids=np.ones((n, L), np.int64),
                      response_mask=np.ones((n, L), np.int64), advantages=np.array(adv, np.float32),
                      is_gt=np.zeros(n, bool), weight_version=0, behaviour_logprobs=np.zeros((n, L), np.float32),
                      has_behaviour=np.ones(n, bool))


def test_dynamic_sampling_keeps_informative_groups_and_merges_rounds():
    from tempsamp.algo.batch import TrainBatch
    from tempsamp.algo.filtering import keep_informative, merge_batches

    r0 = keep_informative(TrainBatch([_group(0, [0, 0]), _group(1, [1, -1]), _group(2, [0, 0])], step=3))
    assert [g.prompt_text for g in r0.groups] == ["p1"] and r0.metrics["filter/kept_groups"] == 1.0
    assert r0.metrics["filter/kept_rows"] == 2.0 and r0.metrics["filter/kept_tokens"] == 6.0
    r1 = keep_informative(TrainBatch([_group(0, [0.5, -0.5]), _group(1, [0, 0]), _group(2, [2, -2])], step=3))
    merged = merge_batches([r0, r1], max_groups=2)
    # round order kept, truncated to the batch size, keys renumbered (the learner keys videos by them)
    assert [(g.key, g.prompt_text, g.video) for g in merged.groups] == [(0, "p1", "v1"), (1, "p0", "v0")]
    assert merged.step == 3 and merged.rows == 4


def test_rounds_of_a_step_never_share_sampling_seeds():
    from tempsamp.rollout.base import SamplingSpec, request_seed

    r = load_config(DEMO, env={}).rollout
    seeds = {request_seed(SamplingSpec.for_step(r, step, rnd).seed, k)
             for step in (1, 2) for rnd in range(4) for k in range(16)}
    assert len(seeds) == 2 * 4 * 16
    assert SamplingSpec.for_step(r, 5, 0).seed == SamplingSpec.for_step(r, 5).seed  # round 0 = the plain step


@pytest.mark.slow
@pytest.mark.ray
def test_dynamic_sampling_on_the_actor_system(tiny_models, synth, tmp_path):
    """GRPO at random init: every group ties, so each step draws filter_max_rounds more prompt sets,
    keeps none and the learner steps on an empty batch (nothing learned from uninformative groups)."""
    import json

    import ray

    from tempsamp.cluster import init_ray
    from tempsamp.trainer import Trainer

    cfg = load_config(DEMO, [f"data.train_files=[{synth['train_jsonl']}]", "trainer.run_name=filt",
                             f"trainer.log_dir={tmp_path / 'logs'}", "rollout.backend=hf", "rollout.max_new_tokens=6",
                             "data.prompts_per_step=2", "rollout.n=2", "video.max_frames=4",
                             f"checkpoint.output_dir={tmp_path / 'ck'}", "checkpoint.resume=never", "trainer.max_steps=1",
                             "algorithm.name=grpo", "algorithm.filter_groups=true", "algorithm.filter_max_rounds=2",
                             "trainer.loggers=[console,jsonl,tensorboard]"],
                      env={})
    init_ray(num_cpus=2)
    try:
        t = Trainer(cfg, model_dir=tiny_models("qwen2_5_vl"))
        try:
            row = t.run()["last"]
        finally:
            t.shutdown()
        assert row["filter/kept_groups"] == 0.0 and row["filter/rounds"] == 2.0
        assert row["filter/sampled_groups"] == 6.0 and len(row["batch/indices"]) == 6  # 3 draws of 2 prompts
        assert row["batch/rows"] == 0.0 and row["learn/grad_norm"] == 0.0
        assert t.sampler.state.index == 6  # the extra prompts were consumed from the epoch
        logged = json.loads((tmp_path / "logs" / "filt" / "steps.jsonl").read_text().splitlines()[-1])
        assert logged["filter/rounds"] == 2.0
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        ea = EventAccumulator(str(tmp_path / "logs" / "filt" / "tensorboard"))  # the trainer's own tracker
        ea.Reload()
        assert [(e.step, e.value) for e in ea.Scalars("filter/rounds")] == [(1, 2.0)]
    finally:
        ray.shutdown()
