"""Each tiny family: processor on a synthetic video, generate, log-probs agree, one optimizer step."""

import json
from pathlib import Path

import pytest
import torch

from tempsamp.data.prompts import build_problem
from tempsamp.data.records import read_records
from tempsamp.data.video import VideoParams, decode_video
from tempsamp.models.loading import detect_family, load_model, load_processor, pick_attn_implementation
from tempsamp.models.policy import build_inputs, generate, render_prompt, response_logprobs


@pytest.mark.slow
@pytest.mark.parametrize("family,tol", [("qwen2_5_vl", 1e-4), ("qwen3_vl", 1e-4), ("qwen3_5", 0.1)])
def test_family_end_to_end(tiny_models, synth, family, tol):
    path = tiny_models(family)
    assert detect_family(path) == family
    proc = load_processor(path)
    model = load_model(path, dtype="bfloat16" if family == "qwen3_5" else "float32")
    rec = read_records(synth["train_jsonl"])[0][0]
    video = decode_video(rec.video, VideoParams(fps=1.0, max_frames=8, min_pixels=3136, max_pixels=6272,
                                                patch_size=14 if family == "qwen2_5_vl" else 16))
    inputs = build_inputs(proc, render_prompt(proc, rec.problem), video)
    assert (inputs.input_ids == 151656).sum() > 0  # video tokens expanded
    ids, mask, gen_lp = generate(model, inputs, n=3, max_new_tokens=6, seed=0)
    assert ids.shape[0] == 3
    lp = response_logprobs(model, inputs, ids, mask)
    assert (lp - gen_lp).abs().max().item() < tol
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lm_head" in n or "embed" in n}
    loss = -(response_logprobs(model, inputs, ids, mask) * mask).sum() / mask.sum()
    loss.backward()
    opt.step()
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if n in before)


def test_attn_choice():
    assert pick_attn_implementation("auto", "cpu") == "sdpa"
    assert pick_attn_implementation("eager", "cpu") == "eager"


def test_prompt_render(tiny_models):
    proc = load_processor(tiny_models("qwen2_5_vl"))
    text = render_prompt(proc, build_problem("x"))
    assert text.startswith("<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>To accurately")
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert "<think>" not in proc.apply_chat_template(
        [{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True, enable_thinking=False)


def test_qwen35_prompt_disables_thinking(tiny_models):
    proc = load_processor(tiny_models("qwen3_5"))
    assert render_prompt(proc, build_problem("x")).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


@pytest.mark.slow
def test_hf_engine_logprobs_are_the_behaviour_policy_the_learner_computes_at_temperature(tiny_models, synth):
    """The HF engine returns the log-probs of the distribution it sampled from (temperature, top-k,
    top-p applied); the learner's log-probs at the same temperature equal them when nothing is cut."""
    from tempsamp.models.policy import pad_responses
    from tempsamp.rollout.base import SamplingSpec
    from tempsamp.rollout.hf import sample_group

    path = tiny_models("qwen2_5_vl")
    proc = load_processor(path)
    model = load_model(path, dtype="float32")
    rec = read_records(synth["train_jsonl"])[0][0]
    video = decode_video(rec.video, VideoParams(fps=1.0, max_frames=8, min_pixels=3136, max_pixels=6272, patch_size=14))
    inputs = build_inputs(proc, render_prompt(proc, rec.problem), video)
    gaps = {}
    for top_k in (-1, 5):
        g = sample_group(model, proc.tokenizer, inputs, 0,
                         SamplingSpec(n=3, temperature=0.7, top_p=1.0, top_k=top_k, max_new_tokens=8, seed=0), 0)
        ids, mask = pad_responses(g.response_ids, 151643)
        with torch.no_grad():
            lp_t = response_logprobs(model, inputs, ids, mask, temperature=0.7)
            lp_1 = response_logprobs(model, inputs, ids, mask)
        eng = torch.zeros_like(lp_t)
        for r, row in enumerate(g.logprobs):
            assert len(row) == len(g.response_ids[r])
            eng[r, : len(row)] = torch.tensor(row)
        gaps[top_k] = (lp_t - eng)[mask.bool()]
        if top_k == -1:
            assert gaps[top_k].abs().max().item() < 1e-4  # the learner at T = the engine's behaviour policy
            assert (lp_1 - eng)[mask.bool()].abs().max().item() > 1e-3  # temperature 1 is another policy
    assert (gaps[5] <= 1e-5).all() and gaps[5].min() < -1e-4  # top-k renormalises: behaviour >= learner
    # the learner's log-probs under the same filter (what the mismatch / correction compare) equal the
    # engine's even when top-k / top-p cut the distribution
    from tempsamp.models.policy import response_scores

    for top_k, top_p in ((5, 1.0), (-1, 0.8), (20, 0.9)):
        g = sample_group(model, proc.tokenizer, inputs, 1,
                         SamplingSpec(n=3, temperature=0.7, top_p=top_p, top_k=top_k, max_new_tokens=8, seed=1), 0)
        ids, mask = pad_responses(g.response_ids, 151643)
        with torch.no_grad():
            sc = response_scores(model, inputs, ids, mask, 0.7, False, top_k, top_p)
        eng = torch.zeros_like(sc.logprobs)
        for r, row in enumerate(g.logprobs):
            eng[r, : len(row)] = torch.tensor(row)
        assert (sc.sampled_logprobs - eng)[mask.bool()].abs().max().item() < 1e-4, (top_k, top_p)
        assert torch.equal(sc.logprobs, response_logprobs(model, inputs, ids, mask, temperature=0.7))


def test_truncate_logits_is_the_engines_filter():
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    from tempsamp.models.policy import truncate_logits

    torch.manual_seed(0)
    x = torch.randn(6, 50) * 3
    for k, p in ((-1, 1.0), (5, 1.0), (-1, 0.7), (10, 0.5), (1, 0.9), (-1, 0.0001)):
        ref = x.clone()
        if k > 0:
            ref = TopKLogitsWarper(k)(None, ref)
        if p < 1.0:
            ref = TopPLogitsWarper(p)(None, ref)
        ours = truncate_logits(x, k, p)
        assert torch.equal(torch.isinf(ours), torch.isinf(ref)), (k, p)
        assert torch.allclose(ours[~torch.isinf(ours)], x[~torch.isinf(ours)])
        assert (~torch.isinf(ours)).sum(-1).min() >= 1  # the most likely token always stays


def test_top_p_from_candidates_equals_the_full_sort(monkeypatch):
    """top-p alone looks among the TOP_P_CANDIDATES largest logits first; rows whose nucleus is wider
    (flat) are sorted whole. Peaked, flat and mixed rows: the same kept set as transformers' warper."""
    from transformers.generation.logits_process import TopPLogitsWarper

    from tempsamp.models import policy

    monkeypatch.setattr(policy, "TOP_P_CANDIDATES", 16)
    torch.manual_seed(1)
    peaked = torch.randn(5, 500) * 0.3
    peaked[:, :4] += torch.tensor([9.0, 8.0, 7.5, 6.0])  # nucleus of a few tokens: within the 16 candidates
    flat = torch.randn(3, 500) * 0.3  # nucleus of hundreds: these rows take the full sort
    x = torch.cat([peaked, flat])[torch.randperm(8)]
    for p in (0.85, 0.5, 0.99):
        ref = TopPLogitsWarper(p)(None, x.clone())
        ours = policy.truncate_logits(x, -1, p)
        assert torch.equal(torch.isinf(ours), torch.isinf(ref)), p
        assert torch.equal(ours[~torch.isinf(ours)], x[~torch.isinf(ours)])
    kept = (~torch.isinf(policy.truncate_logits(x, -1, 0.85))).sum(-1)
    assert kept.min() <= 4 and kept.max() > 16  # both paths were taken


def test_filtered_logprobs_equal_log_softmax_of_the_truncated_logits(monkeypatch):
    """The learner's log-probs under the engine's filter, taken from the kept logits only, equal
    log_softmax(truncate_logits(...)) at the token (-inf outside the kept set): top-k, top-k + top-p,
    top-p among the candidates (peaked rows) and past them (flat rows), and ties at the threshold
    (kept by the filter although outside the k largest; split by the top-p sort)."""
    from tempsamp.models import policy

    monkeypatch.setattr(policy, "TOP_P_CANDIDATES", 16)
    torch.manual_seed(2)
    peaked = torch.randn(6, 300) * 0.3
    peaked[:, :4] += torch.tensor([9.0, 8.0, 7.5, 6.0])
    flat = torch.randn(4, 300) * 0.3
    tied = torch.randn(4, 300)
    tied[:, 10:14] = 5.0  # four equal logits: top-k 2 keeps all four, top-p may cut between them
    tied[:, 20] = 7.0
    x = torch.cat([peaked, flat, tied])
    kept_somewhere = x.topk(3, -1).indices
    for k, p in ((5, 1.0), (2, 1.0), (1, 1.0), (10, 0.5), (3, 0.9), (-1, 0.85), (-1, 0.5), (-1, 0.99),
                 (-1, 1.0), (400, 0.9)):
        finite = 0
        for tok in (kept_somewhere[:, 0], kept_somewhere[:, 2], torch.full((14,), 12), torch.randint(0, 300, (14,))):
            ref = torch.log_softmax(policy.truncate_logits(x, k, p), -1).gather(-1, tok[:, None]).squeeze(-1)
            ours = policy.filtered_logprobs(x, tok, k, p)
            assert torch.equal(torch.isinf(ours), torch.isinf(ref)), (k, p)
            fin = ~torch.isinf(ref)
            assert torch.allclose(ours[fin], ref[fin], atol=1e-5, rtol=0), (k, p)
            finite += int(fin.sum())
        assert finite >= 14, (k, p)  # the most likely token of every row is always kept
    small = torch.zeros(2, 12)  # fewer entries than candidates: the top-p rule sorts the whole row,
    small[:, :4] = 3.0  # and the nucleus ends inside the four tied logits
    for p in (0.5, 0.6):
        for t in range(5):
            tok = torch.full((2,), t)
            ref = torch.log_softmax(policy.truncate_logits(small, -1, p), -1).gather(-1, tok[:, None]).squeeze(-1)
            ours = policy.filtered_logprobs(small, tok, -1, p)
            assert torch.equal(torch.isinf(ours), torch.isinf(ref)), (p, t)
            assert torch.allclose(ours[~torch.isinf(ref)], ref[~torch.isinf(ref)], atol=1e-5, rtol=0), (p, t)


def test_reward_tokenizer_gives_the_policy_tokenizers_ids(tiny_models, tmp_path):
    """The reward role's tokenizer (`tokenizers` on tokenizer.json, no transformers) and its fallback (a
    folder with only vocab.json + merges.txt, through transformers) encode as the policy's tokenizer and
    end / pad responses with the same ids."""
    from tempsamp.models.loading import load_processor
    from tempsamp.models.text_tokenizer import TextTokenizer, special_ids

    texts = ["<answer> 12.5 to 30.75 </answer>", " <answer>3 to 4</answer><|im_end|>", "héllo  wörld\n\t中文",
             "<think>the red square</think>", ""]
    for family in ("qwen2_5_vl", "qwen3_5"):
        model = tiny_models(family)
        hf = load_processor(model).tokenizer
        want = [hf.encode(t, add_special_tokens=False) for t in texts]
        fast = TextTokenizer(model)
        assert [fast.encode(t) for t in texts] == want, family
        assert (fast.eos_id, fast.pad_id) == special_ids(hf) == (151645, 151643)
    # a slow-tokenizer folder (vocab.json + merges.txt), built from the same vocabulary
    src = Path(tiny_models("qwen2_5_vl"))
    spec = json.loads((src / "tokenizer.json").read_text())
    (tmp_path / "vocab.json").write_text(json.dumps(spec["model"]["vocab"]))
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    conf = json.loads((src / "tokenizer_config.json").read_text())
    conf.pop("backend", None)
    keys = ("content", "lstrip", "rstrip", "normalized", "single_word", "special")
    conf["added_tokens_decoder"] = {str(t["id"]): {k: t[k] for k in keys} for t in spec["added_tokens"]}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(conf))
    slow = TextTokenizer(tmp_path)
    assert [slow.encode(t) for t in texts] == want and (slow.eos_id, slow.pad_id) == (151645, 151643)
    # a tokenizer.json without the chat template's end token is refused, naming the file and the token
    bad = tmp_path / "bad"
    bad.mkdir()
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] != "<|im_end|>"]
    (bad / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=r"bad/tokenizer.json: no token '<\|im_end\|>' \(not a Qwen chat tokenizer\)"):
        TextTokenizer(bad)


def test_exported_and_built_models_follow_the_umask(tiny_models, tmp_path):
    """An HF export (what `tempsamp eval` and other users read) and a built tiny model get the user's
    umask on every file, model.safetensors included (the safetensors writer creates 0600); a folder
    write that fails leaves the old folder and no temp folder."""
    import os
    import stat

    from tempsamp.io import atomic_dir
    from tempsamp.learner.checkpoint import export_hf
    from tempsamp.models.tiny import build_tiny_model

    src = tiny_models("qwen2_5_vl")
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    old = os.umask(0o022)
    try:
        out = export_hf(str(tmp_path / "actor"), load_model(src), load_processor(src), src, rank=0, step=3)
        built = build_tiny_model(tmp_path / "tiny", "qwen2_5_vl", layers=1)
        os.umask(0o077)
        private = build_tiny_model(tmp_path / "private", "qwen2_5_vl", layers=1)
        with pytest.raises(RuntimeError, match="disk full"):
            with atomic_dir(tmp_path / "tiny") as tmp:
                (tmp / "half.bin").write_bytes(b"x")
                raise RuntimeError("disk full")
    finally:
        os.umask(old)
    for folder, want in ((Path(out), 0o644), (built, 0o644), (private, 0o600)):
        files = [p for p in folder.rglob("*") if p.is_file()]
        assert any(p.name == "model.safetensors" for p in files), folder
        assert {p.name: mode(p) for p in files} == {p.name: want for p in files}, folder
    assert (built / "tempsamp_tiny.json").is_file() and not (tmp_path / "tiny.tmp").exists()
    assert json.loads((Path(out) / "tempsamp_export.json").read_text())["step"] == 3
    added = lambda d: json.loads((Path(d) / "tokenizer_config.json").read_text())["added_tokens_decoder"]  # noqa: E731
    assert added(out) == added(src)  # the export keeps the base's added tokens (see the next test)


def test_tokenizer_config_records_the_added_tokens_as_published_checkpoints_do(tiny_models, tmp_path, monkeypatch):
    """A tiny model's tokenizer_config.json lists its added tokens (`added_tokens_decoder`, as Qwen's
    published checkpoints do; transformers 5's save_pretrained leaves it out). Loading then parses
    tokenizer.json once instead of twice, and gives the same tokenizer as a folder without the field."""
    import shutil

    import transformers.tokenization_utils_base as tub
    from transformers import AutoTokenizer

    src = Path(tiny_models("qwen2_5_vl"))
    spec = json.loads((src / "tokenizer.json").read_text())
    added = json.loads((src / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    assert {int(i): (t["content"], t["special"]) for i, t in added.items()} == \
        {t["id"]: (t["content"], t["special"]) for t in spec["added_tokens"]}
    bare = tmp_path / "bare"  # the same tokenizer files, saved the transformers 5 way
    bare.mkdir()
    for name in ("tokenizer.json", "chat_template.jinja"):
        shutil.copy(src / name, bare / name)
    conf = json.loads((src / "tokenizer_config.json").read_text())
    conf.pop("added_tokens_decoder")
    (bare / "tokenizer_config.json").write_text(json.dumps(conf))

    parses, real_load = [], json.load

    def counting_load(f, *a, **kw):
        if getattr(f, "name", "").endswith("tokenizer.json"):
            parses.append(f.name)
        return real_load(f, *a, **kw)

    monkeypatch.setattr(tub.json, "load", counting_load)  # the json module transformers' loaders share
    toks = {}
    for name, folder in (("recorded", src), ("bare", bare)):
        parses.clear()
        toks[name] = AutoTokenizer.from_pretrained(str(folder))
        toks[name + " parses"] = len(parses)
    assert (toks["recorded parses"], toks["bare parses"]) == (1, 2)
    a, b = toks["recorded"], toks["bare"]
    assert {i: str(t) for i, t in a.added_tokens_decoder.items()} == {i: str(t) for i, t in b.added_tokens_decoder.items()}
    text = "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>when? <answer> 1.5 to 3.25 </answer><|im_end|>"
    assert a(text).input_ids == b(text).input_ids and (a.eos_token, a.pad_token) == (b.eos_token, b.pad_token)
