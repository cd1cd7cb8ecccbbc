"""Learner core: a PPO step changes the policy the right way; checkpoint round trip; 2-rank FSDP2."""

import numpy as np
import pytest
import torch

from tempsamp.algo.batch import build_train_batch
from tempsamp.config import load_config
from tempsamp.data.records import read_records
from tempsamp.data.video import VideoParams, decode_video
from tempsamp.rollout.base import RolloutGroup

P = VideoParams(fps=1.0, max_frames=8, min_pixels=3136, max_pixels=6272, patch_size=14)


def _cfg(*ov):
    return load_config(None, ["learner.lr=1e-3", "learner.warmup_ratio=0", "learner.gradient_checkpointing=false",
                              "model.dtype=float32", "rollout.n=4", *ov], env={})


def _batch(model_dir, synth, n_prompts=2, n=4, gt=True):
    from tempsamp.models.loading import load_processor
    from tempsamp.models.policy import render_prompt

    proc = load_processor(model_dir)
    tok = proc.tokenizer
    recs = read_records(synth["train_jsonl"])[0][:n_prompts]
    rng = np.random.default_rng(0)
    groups = []
    for k, r in enumerate(recs):
        rows = [rng.integers(100, 5000, size=int(rng.integers(3, 9))).tolist() for _ in range(n)]
        rows[0] = tok.encode(f"<answer> {r.span()[0]} to {r.span()[1] + 3} </answer>", add_special_tokens=False)
        groups.append(RolloutGroup(key=k, response_ids=rows, texts=tok.batch_decode(rows), logprobs=[[]] * n,
                                   weight_version=0))
    videos = [decode_video(r.video, P) for r in recs]
    batch = build_train_batch(groups, [r.span() for r in recs], [render_prompt(proc, r.problem) for r in recs],
                              videos, n=n, step=1, encode=lambda t: tok.encode(t, add_special_tokens=False),
                              eos_id=151645, pad_id=151643, gt_injection=gt)
    return batch, {g.key: v for g, v in zip(batch.groups, videos)}


@pytest.mark.slow
def test_step_raises_gt_logprob_and_checkpoint_roundtrip(tiny_models, synth, tmp_path):
    from tempsamp.learner.core import LearnerCore

    path = tiny_models("qwen2_5_vl")
    batch, videos = _batch(path, synth)
    assert batch.groups[0].is_gt.tolist() == [False, False, False, True]
    core = LearnerCore(_cfg(), path, total_steps=10)
    vis_before = next(core.model.model.visual.parameters()).detach().clone()
    m1 = core.train_step(batch, videos)
    m2 = core.train_step(batch, videos)
    assert m2["gt_logp_per_token"] > m1["gt_logp_per_token"]  # positive advantage -> more likely
    assert torch.equal(next(core.model.model.visual.parameters()), vis_before)  # frozen tower
    core.save_shard(str(tmp_path))
    other = LearnerCore(_cfg(), path, total_steps=10)
    assert other.load_shard(str(tmp_path)) == 2
    for (n, a), (_, b) in zip(core.model.named_parameters(), other.model.named_parameters()):
        assert torch.equal(a, b), n
    s1, s2 = core.train_step(batch, videos), other.train_step(batch, videos)
    assert s1["loss"] == pytest.approx(s2["loss"], abs=1e-6)
    assert s1["gt_logp_per_token"] == pytest.approx(s2["gt_logp_per_token"], abs=1e-5)
    for (n, a), (_, b) in zip(core.model.named_parameters(), other.model.named_parameters()):
        assert torch.allclose(a, b, atol=1e-6), n  # optimizer state restored too


@pytest.mark.slow
def test_grpo_all_zero_rewards_means_no_update(tiny_models, synth):
    from tempsamp.learner.core import LearnerCore

    path = tiny_models("qwen2_5_vl")
    batch, videos = _batch(path, synth, gt=False)
    for g in batch.groups:  # all rows equal reward -> zero advantage
        g.advantages[:] = 0.0
    core = LearnerCore(_cfg("learner.weight_decay=0"), path, total_steps=10)
    before = {n: p.detach().clone() for n, p in core.model.named_parameters()}
    core.train_step(batch, videos)
    assert all(torch.equal(before[n], p) for n, p in core.model.named_parameters())


@pytest.mark.slow
def test_each_mini_batch_step_is_normalised_by_its_own_tokens(tiny_models, synth):
    """With 2 mini-batches per step, the first optimizer step sees exactly the gradient a 1-mini-batch
    learner computes on the first prompt group alone (its own token mean, clipped on that scale)."""
    from tempsamp.algo.batch import TrainBatch
    from tempsamp.learner.core import LearnerCore

    path = tiny_models("qwen2_5_vl")
    batch, videos = _batch(path, synth)
    assert batch.groups[0].tokens != batch.groups[1].tokens  # the old global-token scaling would differ
    first_only = TrainBatch(groups=batch.groups[:1], step=1)
    norms = {}
    for name, b, ov in (("two", batch, "learner.mini_batches_per_step=2"), ("one", first_only, "learner.ppo_epochs=1")):
        core = LearnerCore(_cfg(ov, "learner.grad_clip=1e9"), path, total_steps=10)
        seen = []
        step = core.opt.step

        def record(*a, _seen=seen, _core=core, _step=step, **k):
            _seen.append(float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in _core.params if p.grad is not None))))
            return _step(*a, **k)

        core.opt.step = record
        core.train_step(b, videos)
        norms[name] = seen
    assert len(norms["two"]) == 2 and len(norms["one"]) == 1
    assert norms["two"][0] == pytest.approx(norms["one"][0], rel=1e-5)


@pytest.mark.slow
@pytest.mark.ray
def test_two_rank_fsdp2_matches_single_rank(tiny_models, synth):
    import ray

    from tempsamp.actors.learner import LearnerActor
    from tempsamp.learner.core import LearnerCore
    from tempsamp.sync.weights import free_port

    path = tiny_models("qwen2_5_vl")
    batch, videos = _batch(path, synth, n_prompts=2)
    ref = LearnerCore(_cfg(), path, total_steps=10)
    ref_m = ref.train_step(batch, videos)
    names = ["model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight", "model.norm.weight"]
    ref_w = {n: dict(ref.model.named_parameters())["model.language_model." + n[len("model."):]].detach() for n in names}
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    try:
        for g in batch.groups:
            g.video = ray.put(videos[g.key])
        actors = [LearnerActor.options(num_cpus=0.5).remote() for _ in range(2)]
        addr = f"127.0.0.1:{free_port()}"
        ray.get([a.setup.remote(_cfg(), path, r, 2, addr, 10) for r, a in enumerate(actors)])
        ms = ray.get([a.train_step.remote(batch) for a in actors])
        assert ms[0]["loss"] == pytest.approx(ref_m["loss"], abs=1e-5)
        assert ms[0]["gt_logp_per_token"] == pytest.approx(ref_m["gt_logp_per_token"], abs=1e-4)
        assert ms[0]["micro_batches"] == 1 and ms[1]["micro_batches"] == 1  # one group per rank
        w = ray.get([a.named_weights.remote(names) for a in actors])[0]
        for n in names:
            assert torch.allclose(w[n], ref_w[n].float(), atol=2e-5), n
    finally:
        ray.shutdown()


def test_micro_batches_follow_rank_ownership_and_token_budget():
    from tempsamp.learner.step import micro_batches, rank_groups

    rows = [4, 4, 3, 5]
    assert rank_groups(len(rows), 2, 0) == [0, 2] and rank_groups(len(rows), 2, 1) == [1, 3]
    # rank 0: group 0 (seq 25 -> 4 rows per 100 tokens), group 2 (seq 40 -> 2 rows)
    assert micro_batches(rows, {0: 25, 2: 40}, 100, 2, 0) == [(0, slice(0, 4)), (2, slice(0, 2)), (2, slice(2, 3))]
    # rank 1: group 3's sequence alone exceeds the budget -> one row per micro-batch
    assert micro_batches(rows, {1: 50, 3: 500}, 100, 2, 1) == [(1, slice(0, 2)), (1, slice(2, 4))] + [
        (3, slice(s, s + 1)) for s in range(5)]


def test_plan_chunks_splits_the_cross_rank_count_into_contiguous_mini_batches():
    from tempsamp.learner.step import plan_chunks

    micro = [(0, slice(0, 1))] * 5
    p = plan_chunks(micro, 7, 3)  # another rank has 7 micro-batches: positions 5, 6 are dummies here
    assert (p.chunks, p.per_chunk) == (3, 3)
    assert [p.chunk_of(k) for k in range(5)] == [0, 0, 0, 1, 1]
    assert [p.span(c) for c in range(3)] == [(0, 3), (3, 6), (6, 7)]
    p = plan_chunks(micro[:2], 2, 4)  # more mini-batches than micro-batches: the last spans are empty
    assert [p.chunk_of(k) for k in range(2)] == [0, 1] and p.span(2) == (2, 2)
    p = plan_chunks([], 0, 0)
    assert (p.chunks, p.per_chunk, p.span(0)) == (1, 0, (0, 0))


def test_checkpoint_folders_stage_finalize_and_rotate(tmp_path):
    from tempsamp.learner.checkpoint import (checkpoint_dir, complete_checkpoints, finalize_checkpoint,
                                             read_trainer_state, staging_dir)

    for step in (1, 2, 3):
        tmp = staging_dir(tmp_path, step)
        assert tmp.name == f"global_step_{step}.tmp" and tmp.is_dir() and not any(tmp.iterdir())
        (tmp / "rank0.safetensors").write_text("x")
        assert checkpoint_dir(tmp_path, step) not in complete_checkpoints(tmp_path)  # staged, not complete
        final = finalize_checkpoint(tmp, checkpoint_dir(tmp_path, step), {"step": step}, save_limit=2)
        assert final == tmp_path / f"global_step_{step}" and not tmp.exists()
    assert complete_checkpoints(tmp_path) == [tmp_path / "global_step_2", tmp_path / "global_step_3"]
    state = read_trainer_state(tmp_path / "global_step_3")
    assert state["step"] == 3 and set(state["rng"]) == {"python", "torch"}
    stale = staging_dir(tmp_path, 4)
    (stale / "junk").write_text("x")
    assert not any(staging_dir(tmp_path, 4).iterdir())  # a stale staging folder starts empty again
