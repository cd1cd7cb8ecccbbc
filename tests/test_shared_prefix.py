"""Shared-prefix scoring (models/shared_prefix.py) gives the unshared forward's numbers.

fp32 tiny models of every family (eval mode: no dropout in these configs either way), one synthetic video prompt, a group of responses with padding (lengths
1 to 11) and a GT row (the teacher-forced answer). Tolerances: per-token log-probs and entropies within
1e-5 absolute (measured ~1e-6: only the summation order of differently shaped matmuls differs); every
parameter's loss gradient within 1e-5 of that parameter's largest unshared gradient entry (measured ~1e-6).
"""

import pytest
import torch

from tempsamp.data.records import read_records
from tempsamp.data.video import VideoParams, decode_video
from tempsamp.models.policy import build_inputs, pad_responses, render_prompt, response_scores
from tempsamp.models.shared_prefix import PackedLayout, block_mask, group_tokens, response_lengths, shared_mode

LP_TOL = 1e-5
GRAD_REL_TOL = 1e-5


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl", "qwen3_5"])
def family_setup(request, tiny_models, synth):
    """(family, fp32 model, prompt inputs, response ids, mask): one model per family for the module."""
    from tempsamp.models.loading import load_model, load_processor

    family = request.param
    path = tiny_models(family)
    proc = load_processor(path)
    model = load_model(path, dtype="float32")
    rec = read_records(synth["train_jsonl"])[0][0]
    video = decode_video(rec.video, VideoParams(fps=1.0, max_frames=8, min_pixels=3136, max_pixels=6272,
                                                patch_size=14 if family == "qwen2_5_vl" else 16))
    inputs = build_inputs(proc, render_prompt(proc, rec.problem), video)
    gt = proc.tokenizer.encode(f"<answer> {rec.span()[0]} to {rec.span()[1]} </answer>", add_special_tokens=False)
    rows = [[9, 151645], list(range(100, 111)), [5], gt + [151645]]  # padding: lengths 2, 11, 1, len(gt) + 1
    ids, mask = pad_responses(rows, 151643)
    return family, model, inputs, ids, mask


def _scores_and_grads(model, inputs, ids, mask, shared, checkpointing=False):
    model.zero_grad(set_to_none=True)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
    try:
        sc = response_scores(model, inputs, ids, mask, 0.7, True, shared_prefix=shared)
        (-(sc.logprobs * mask).sum() / mask.sum()).backward()
    finally:
        if checkpointing:
            model.gradient_checkpointing_disable()
            model.eval()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return sc, grads


@pytest.mark.parametrize("frozen_vision", [True, False], ids=["frozen-vision", "trained-vision"])
def test_shared_prefix_equals_unshared(family_setup, frozen_vision):
    family, model, inputs, ids, mask = family_setup
    assert shared_mode(model) == ("vision" if family == "qwen3_5" else "packed")
    for p in model.model.visual.parameters():
        p.requires_grad_(not frozen_vision)
    calls = []
    hook = model.model.visual.register_forward_hook(lambda m, a, out: calls.append(a[0].shape[0]))
    try:
        ref, ref_g = _scores_and_grads(model, inputs, ids, mask, shared=False)
        # with a trained tower the shared side also runs under gradient checkpointing (the learner's default)
        sh, sh_g = _scores_and_grads(model, inputs, ids, mask, shared=True, checkpointing=not frozen_vision)
    finally:
        hook.remove()
        for p in model.model.visual.parameters():
            p.requires_grad_(True)
    n_pix = inputs.visual["pixel_values_videos"].shape[0]
    assert calls == [n_pix * ids.shape[0], n_pix]  # unshared: the video once per row; shared: once
    assert (sh.logprobs - ref.logprobs).abs().max().item() < LP_TOL
    assert (sh.entropy - ref.entropy).abs().max().item() < LP_TOL
    assert (sh.sampled_logprobs - ref.sampled_logprobs).abs().max().item() < LP_TOL
    assert (sh.logprobs[mask == 0] == 0).all()
    assert set(sh_g) == set(ref_g)
    assert any("visual" in n for n in ref_g) == (not frozen_vision)
    for n, g in ref_g.items():
        scale = g.abs().max().item()
        assert (sh_g[n] - g).abs().max().item() <= GRAD_REL_TOL * max(scale, 1e-8), n


def test_packing_is_not_exact_for_linear_attention(family_setup):
    """Why Qwen3.5 shares only the vision tower: packed, a response after the first is conditioned on
    the responses before it through the Gated-DeltaNet recurrence (no attention mask reaches it)."""
    family, model, inputs, ids, mask = family_setup
    if family != "qwen3_5":
        pytest.skip("full-attention families pack exactly (test_shared_prefix_equals_unshared)")
    from tempsamp.models.shared_prefix import packed_logits

    with torch.no_grad():
        ref = response_scores(model, inputs, ids, mask).logprobs
        logits = packed_logits(model, inputs.input_ids, inputs.mm_token_type_ids, inputs.visual, ids, mask, "cpu")
        lp = torch.log_softmax(logits.float(), -1).gather(-1, ids[..., None]).squeeze(-1) * mask
    assert (lp[0] - ref[0]).abs().max().item() < LP_TOL  # the first response follows the prefix directly
    assert (lp[1:] - ref[1:]).abs().max().item() > 1e-3


def test_packed_layout_mask_and_token_count():
    lay = PackedLayout.of(3, [2, 1, 3])  # a response's last token is not packed: 3 + 1 + 0 + 2 tokens
    assert lay.total == 6 and lay.starts == (3, 4, 4)
    assert lay.segments().tolist() == [0, 0, 0, 1, 3, 3]
    assert lay.keep(3).tolist() == [[2, 3, 2], [2, 2, 2], [2, 4, 5]]
    rows = torch.tensor([[10, 11, 0], [20, 0, 0], [30, 31, 32]])
    assert lay.gather(torch.tensor([1, 2, 3]), rows).tolist() == [1, 2, 3, 10, 30, 31]
    allowed = block_mask(lay.segments(), "sdpa", torch.float32)[0, 0]
    assert allowed.tolist() == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],  # response 0 sees the prefix and itself
        [1, 1, 1, 0, 1, 0],  # response 2 never sees response 0
        [1, 1, 1, 0, 1, 1],
    ]
    add = block_mask(lay.segments(), "eager", torch.float32)[0, 0]
    assert torch.equal(add == 0, allowed)
    assert group_tokens(2000, 8, 64, "packed") == 2000 + 8 * 64
    assert group_tokens(2000, 8, 64, "vision") == 8 * 2064


def test_response_mask_must_be_right_padded():
    assert response_lengths(torch.tensor([[1, 1, 0], [1, 0, 0]])) == [2, 1]
    with pytest.raises(ValueError, match="row 1"):
        response_lengths(torch.tensor([[1, 1, 0], [0, 1, 0]]))


def test_vision_once_on_full_attention_families(family_setup, monkeypatch):
    """The "vision" mode (what flash-attention 2 gets) on Qwen2.5-VL and Qwen3-VL (deepstack features)."""
    family, model, inputs, ids, mask = family_setup
    if family == "qwen3_5":
        pytest.skip("Qwen3.5 runs this mode in test_shared_prefix_equals_unshared")
    import tempsamp.models.policy as policy

    ref, ref_g = _scores_and_grads(model, inputs, ids, mask, shared=False)
    monkeypatch.setattr(policy, "shared_mode", lambda m: "vision")
    sh, sh_g = _scores_and_grads(model, inputs, ids, mask, shared=True)
    assert (sh.logprobs - ref.logprobs).abs().max().item() < LP_TOL
    assert set(sh_g) == set(ref_g)
    for n, g in ref_g.items():
        assert (sh_g[n] - g).abs().max().item() <= GRAD_REL_TOL * max(g.abs().max().item(), 1e-8), n
