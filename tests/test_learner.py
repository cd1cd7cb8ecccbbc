"""Learner core: a PPO step changes the policy the right way; checkpoint round trip; 2-rank FSDP2."""

import math

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
    # no sampling filter: the recipe's top_p 0.85 on the tiny random model's flat rows sorts the whole
    # 151,936-token vocabulary for every response token (70 % of a learner step here); the filter is
    # tested on its own (tests/test_models.py) and through the trainer (top-k, tests/test_trainer_vllm.py)
    return load_config(None, ["learner.lr=1e-3", "learner.warmup_ratio=0", "learner.gradient_checkpointing=false",
                              "model.dtype=float32", "rollout.n=4", "rollout.top_p=1.0", *ov], env={})


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


WEIGHT_NAMES = ["model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight", "model.norm.weight"]


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module's two-rank tests (each starts and kills its own learner actors)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    yield
    ray.shutdown()


def _two_ranks_vs_one(path, batch, videos, overrides=(), skip_on_reference=True):
    """The step of a single-rank core (the reference) and of two FSDP2 learner actors on the same
    batch: (reference metrics, the two ranks' metrics); asserts the trained weights agree."""
    import ray

    from tempsamp.actors.learner import LearnerActor
    from tempsamp.learner.core import LearnerCore
    from tempsamp.sync.weights import free_port

    ref = LearnerCore(_cfg(*overrides), path, total_steps=10)
    ref.skip_zero_adv = skip_on_reference
    ref_m = ref.train_step(batch, videos)
    params = dict(ref.model.named_parameters())
    ref_w = {n: params["model.language_model." + n[len("model."):]].detach() for n in WEIGHT_NAMES}
    for g in batch.groups:
        g.video = ray.put(videos[g.key])
    actors = [LearnerActor.options(num_cpus=0.5).remote() for _ in range(2)]
    try:
        addr = f"127.0.0.1:{free_port()}"
        ray.get([a.setup.remote(_cfg(*overrides), path, r, 2, addr, 10) for r, a in enumerate(actors)])
        ms = ray.get([a.train_step.remote(batch) for a in actors])
        w = ray.get([a.named_weights.remote(WEIGHT_NAMES) for a in actors])[0]
        for n in WEIGHT_NAMES:
            assert torch.allclose(w[n], ref_w[n].float(), atol=2e-5), n
        return ref_m, ms
    finally:
        for a in actors:
            ray.kill(a)


@pytest.mark.slow
@pytest.mark.ray
def test_two_rank_fsdp2_matches_single_rank(local_ray, tiny_models, synth):
    path = tiny_models("qwen2_5_vl")
    batch, videos = _batch(path, synth, n_prompts=2)
    ref_m, ms = _two_ranks_vs_one(path, batch, videos)
    assert ms[0]["loss"] == pytest.approx(ref_m["loss"], abs=1e-5)
    assert ms[0]["gt_logp_per_token"] == pytest.approx(ref_m["gt_logp_per_token"], abs=1e-4)
    assert ms[0]["micro_batches"] == 1 and ms[1]["micro_batches"] == 1  # one group per rank


def test_micro_batches_follow_rank_ownership_and_token_budget():
    from tempsamp.learner.step import micro_batches, rank_groups

    rows = [4, 4, 3, 5]
    assert rank_groups(len(rows), 2, 0) == [0, 2] and rank_groups(len(rows), 2, 1) == [1, 3]
    # rank 0: group 0 (seq 25 -> 4 rows per 100 tokens), group 2 (seq 40 -> 2 rows)
    assert micro_batches(rows, {0: 25, 2: 40}, 100, 2, 0) == [(0, slice(0, 4)), (2, slice(0, 2)), (2, slice(2, 3))]
    # rank 1: group 3's sequence alone exceeds the budget -> one row per micro-batch
    assert micro_batches(rows, {1: 50, 3: 500}, 100, 2, 1) == [(1, slice(0, 2)), (1, slice(2, 4))] + [
        (3, slice(s, s + 1)) for s in range(5)]
    # shared-prefix packing: the prompt counts once; group 0 (prompt 20 + response 5): 20 + 4 x 5 <= 40,
    # group 2 (prompt 30 + response 10): 30 + 1 x 10 -> one row per micro-batch
    assert micro_batches(rows, {0: 25, 2: 40}, 40, 2, 0, prefix_lens={0: 20, 2: 30}) == [
        (0, slice(0, 4)), (2, slice(0, 1)), (2, slice(1, 2)), (2, slice(2, 3))]


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


def test_lr_warmup_starts_at_zero():
    from tempsamp.learner.step import lr_lambda

    f = lr_lambda(4, 10, "constant")
    assert [f(s) for s in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]  # EasyR1: lr 0 at the first step
    g = lr_lambda(2, 6, "cosine")
    assert [g(s) for s in range(3)] == [0.0, 0.5, 1.0] and g(6) == pytest.approx(0.0, abs=1e-12)
    assert lr_lambda(0, 10, "constant")(0) == 1.0


def test_run_rows_and_schedule_keep_the_plan():
    from tempsamp.learner.step import plan_chunks, run_rows, run_schedule

    adv = [np.array([0.0, 0.0, 0.0, 0.0]), np.array([1.0, 0.0, -1.0, 0.0]), np.array([0.5, 0.5, 0.5, 0.5])]
    micro = [(0, slice(0, 2)), (0, slice(2, 4)), (1, slice(0, 2)), (1, slice(2, 4)), (2, slice(0, 4))]
    rows = run_rows(adv, micro, skip_zero_adv=True)
    assert [r.tolist() for r in rows] == [[], [], [0], [2], [0, 1, 2, 3]]
    assert [r.tolist() for r in run_rows(adv, micro, skip_zero_adv=False)][:2] == [[0, 1], [2, 3]]
    plan = plan_chunks(micro, 6, 3)  # another rank has 6 micro-batches: chunks of 2
    # chunk 0 (micro 0, 1) is all skipped here; another rank runs 1 there -> one dummy
    assert run_schedule(plan, rows, [1, 2, 2]) == [[None], [2, 3], [4, None]]
    assert run_schedule(plan, rows, [0, 2, 1]) == [[], [2, 3], [4]]


def _perturbed_batch(path, synth, **kw):
    batch, videos = _batch(path, synth, **kw)
    # group 1: a tied group (all advantages 0); group 0: one zero-advantage row among nonzero ones
    batch.groups[1].advantages[:] = 0.0
    batch.groups[0].advantages[1] = 0.0
    return batch, videos


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [(), ("learner.mini_batches_per_step=2", "learner.micro_batch_tokens=1")])
def test_skipping_zero_advantage_rows_is_the_same_step(tiny_models, synth, overrides):
    """Same loss, same gradient, same update: the skipped rows contribute exactly 0, the denominators
    keep them, and a mini-batch whose rows are all skipped still takes its optimizer step (weight
    decay, Adam moments). Gradients agree to ~1e-8 (fewer rows per forward round differently); Adam
    turns a gradient entry near its eps (1e-8) into a +-lr step, so the parameters are compared with
    eps 1e-3, where the update is Lipschitz in the gradient (lr / eps = 1)."""
    from tempsamp.learner.core import LearnerCore

    path = tiny_models("qwen2_5_vl")
    batch, videos = _perturbed_batch(path, synth, gt=True)
    out = {}
    for skip in (False, True):
        core = LearnerCore(_cfg(*overrides), path, total_steps=10)
        core.skip_zero_adv = skip
        for pg in core.opt.param_groups:
            pg["eps"] = 1e-3
        grads, step = [], core.opt.step

        def record(*a, _grads=grads, _core=core, _step=step, **k):
            _grads.append([p.grad.detach().clone() for p in _core.params])
            return _step(*a, **k)

        core.opt.step = record
        ms = [core.train_step(batch, videos) for _ in range(1 if overrides else 2)]
        out[skip] = (ms, grads, {n: p.detach().clone() for n, p in core.model.named_parameters()})
    (full, g_full, w_full), (skipped, g_skip, w_skip) = out[False], out[True]
    assert len(g_full) == len(g_skip) == len(full) * full[0]["updates"]
    for ga, gb in zip(g_full, g_skip):
        for a, b in zip(ga, gb):
            assert torch.allclose(a, b, atol=1e-6, rtol=0)
    for a, b in zip(full, skipped):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-6)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], abs=1e-6)
        assert b["clipfrac"] == pytest.approx(a["clipfrac"], abs=1e-9)
        assert b["updates"] == a["updates"]
        assert a["rows_skipped"] == 0 and b["rows_skipped"] == 5  # 4 tied rows + 1
        assert b["micro_batches_run"] < a["micro_batches_run"] or not overrides
    for n, p in w_full.items():
        assert torch.allclose(w_skip[n], p, atol=1e-6, rtol=0), n
    assert full[0]["zero_adv_groups"] == 0.5


@pytest.mark.slow
def test_all_zero_advantages_skip_everything_and_still_step(tiny_models, synth):
    from tempsamp.learner.core import LearnerCore

    path = tiny_models("qwen2_5_vl")
    batch, videos = _batch(path, synth, gt=False)
    for g in batch.groups:
        g.advantages[:] = 0.0
    res = {}
    for skip in (False, True):
        core = LearnerCore(_cfg(), path, total_steps=10)
        core.skip_zero_adv = skip
        m = core.train_step(batch, videos)
        res[skip] = (m, {n: p.detach().clone() for n, p in core.model.named_parameters()})
    (mf, wf), (ms, ws) = res[False], res[True]
    assert ms["micro_batches_run"] == 0 and ms["rows_skipped"] == 8 and ms["zero_adv_groups"] == 1.0
    assert ms["grad_norm"] == mf["grad_norm"] == 0.0 and ms["loss"] == mf["loss"] == 0.0
    assert math.isnan(ms["entropy"]) and math.isnan(ms["onpolicy_logp_per_token"])  # nothing run
    assert all(torch.equal(wf[n], ws[n]) for n in wf)  # weight decay applied alike


@pytest.mark.slow
def test_mismatch_and_correction_metrics(tiny_models, synth):
    """Behaviour log-probs = the learner's own minus 0.1 on sampled rows: d = +0.1 on every sampled token."""
    from tempsamp.learner.core import LearnerCore
    from tempsamp.models.loading import load_model, load_processor
    from tempsamp.models.policy import build_inputs, response_logprobs

    path = tiny_models("qwen2_5_vl")
    batch, videos = _batch(path, synth, gt=True)
    model, proc = load_model(path, dtype="float32"), load_processor(path)
    T = 0.7
    for g in batch.groups:
        with torch.no_grad():
            lp = response_logprobs(model, build_inputs(proc, g.prompt_text, videos[g.key]),
                                   torch.as_tensor(g.response_ids), torch.as_tensor(g.response_mask), temperature=T)
        g.has_behaviour = ~g.is_gt
        g.behaviour_logprobs = np.where(g.has_behaviour[:, None], (lp.numpy() - 0.1) * g.response_mask, 0.0).astype(np.float32)
    sampled = sum(int(g.response_mask[~g.is_gt].sum()) for g in batch.groups)
    k3 = math.exp(0.1) - 1 - 0.1
    runs = {}
    for mode in ("none", "tis", "mis"):
        core = LearnerCore(_cfg(f"rollout.temperature={T}", "rollout.top_k=-1", "rollout.top_p=1.0",
                                f"algorithm.rollout_correction={mode}",
                                "algorithm.tis_cap=1.05", "algorithm.mis_high=1.05"), path, total_steps=10)
        assert core.correction.mode == mode and core.temperature == T
        runs[mode] = m = core.train_step(batch, videos)
        assert m["mismatch_abs_mean"] == pytest.approx(0.1, abs=2e-4)
        assert m["mismatch_abs_max"] == pytest.approx(0.1, abs=5e-4)
        assert m["mismatch_k3"] == pytest.approx(k3, abs=1e-4)
        assert m["entropy"] > 0 and m["zero_adv_groups"] == 0.0
    assert runs["none"]["is_weight_mean"] == runs["none"]["is_weight_min"] == 1.0
    assert runs["none"]["is_clipped_frac"] == 0.0
    assert runs["tis"]["is_weight_max"] == pytest.approx(1.05) and runs["tis"]["is_clipped_frac"] == 1.0
    assert runs["mis"]["is_weight_mean"] == 0.0 and runs["mis"]["is_clipped_frac"] == 1.0
    # tis: every sampled token's loss x 1.05 (GT rows x 1); mis: sampled tokens masked, only GT rows remain
    assert runs["tis"]["loss"] != pytest.approx(runs["none"]["loss"], abs=1e-6)
    # no behaviour log-probs at all: NaN, not 0
    batch2, videos2 = _batch(path, synth, gt=True)
    m = LearnerCore(_cfg(), path, total_steps=10).train_step(batch2, videos2)
    for k in ("mismatch_abs_mean", "mismatch_k3", "mismatch_abs_max", "is_weight_mean", "is_weight_max",
              "is_weight_min", "is_clipped_frac"):
        assert math.isnan(m[k]), k
    assert sampled > 0


@pytest.mark.slow
@pytest.mark.ray
def test_two_rank_fsdp2_skipping_matches_single_rank_unskipped(local_ray, tiny_models, synth):
    """Rank 1's group is all zero-advantage: it runs only zero-weight dummies (as many as rank 0 runs
    micro-batches, in the old-log-prob pass too), and the step equals a single rank's unskipped one."""
    path = tiny_models("qwen2_5_vl")
    batch, videos = _perturbed_batch(path, synth, gt=True)
    ref_m, ms = _two_ranks_vs_one(path, batch, videos, ("learner.micro_batch_tokens=1", "learner.ppo_epochs=2"),
                                  skip_on_reference=False)
    assert [m["micro_batches_run"] for m in ms] == [3, 0] and ms[0]["rows_skipped"] == 5
    assert ms[0]["loss"] == pytest.approx(ref_m["loss"], abs=1e-5)
    assert ms[0]["grad_norm"] == pytest.approx(ref_m["grad_norm"], abs=1e-5)
