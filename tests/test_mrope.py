"""Qwen2.5-VL M-RoPE positions: the original rule (text after a vision block continues at its max
position + 1, as Qwen trained it and vLLM computes it), installed over transformers' rule."""

import pytest
import torch


def _video_prompt(n_before=3, grid=(4, 2, 2), n_after=2):
    n_vid = grid[0] * (grid[1] // 2) * (grid[2] // 2)
    ids = torch.zeros(1, n_before + n_vid + n_after, dtype=torch.long)
    types_ = torch.tensor([[0] * n_before + [2] * n_vid + [0] * n_after], dtype=torch.int)
    return ids, types_, torch.tensor([list(grid)])


def test_original_rule_hand_computed(tiny_models):
    from tempsamp.models.loading import load_model
    from tempsamp.models.mrope import PATCHED_ATTR

    model = load_model(tiny_models("qwen2_5_vl"))
    assert getattr(model.model, PATCHED_ATTR, False), "transformers 5.19 needs the patch; the probe must say so"
    tps = model.config.vision_config.tokens_per_second
    assert tps == 4
    ids, types_, grid = _video_prompt()
    pos, delta = model.model.get_rope_index(ids, mm_token_type_ids=types_, video_grid_thw=grid,
                                            second_per_grid_ts=torch.tensor([2.0]))
    # 3 text tokens at 0,1,2; 4 frame groups x 1 x 1 merged tokens: t = 3 + k*2.0*4, h = w = 3;
    # then text continues at max(3 + 24) + 1 = 28
    expected_t = [0, 1, 2, 3, 11, 19, 27, 28, 29]
    expected_hw = [0, 1, 2, 3, 3, 3, 3, 28, 29]
    assert pos[0, 0].tolist() == expected_t
    assert pos[1, 0].tolist() == expected_hw and pos[2, 0].tolist() == expected_hw
    assert delta.tolist() == [[29 + 1 - 9]]
    # transformers' own rule puts the text after the video at 3 + max(h, w) / 2 = 4
    old, _ = type(model.model).get_rope_index(model.model, ids, mm_token_type_ids=types_, video_grid_thw=grid,
                                              second_per_grid_ts=torch.tensor([2.0]))
    assert old[0, 0, 7].item() == 4


def test_images_and_padding_agree_with_transformers(tiny_models):
    """For still images (t = 1) both rules agree; left padding is respected."""
    from tempsamp.models.loading import load_model

    model = load_model(tiny_models("qwen2_5_vl"))
    n_img = 2 * 3
    ids = torch.zeros(2, 2 + 3 + n_img + 4, dtype=torch.long)
    types_ = torch.tensor([[0, 0] + [0] * 3 + [1] * n_img + [0] * 4] * 2, dtype=torch.int)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    grid = torch.tensor([[1, 4, 6], [1, 4, 6]])
    new, d_new = model.model.get_rope_index(ids, mm_token_type_ids=types_, image_grid_thw=grid, attention_mask=mask)
    old, d_old = type(model.model).get_rope_index(model.model, ids, mm_token_type_ids=types_, image_grid_thw=grid,
                                                  attention_mask=mask)
    assert torch.equal(new, old) and torch.equal(d_new, d_old)


def test_video_logprobs_use_original_positions(tiny_models, synth):
    """The learner's scoring pass and HF generation both go through the patched index: generation
    log-probs equal a scoring pass, and differ from what transformers' rule would give."""
    from tempsamp.data.prompts import build_problem
    from tempsamp.data.records import read_records
    from tempsamp.data.video import VideoParams, decode_video
    from tempsamp.models.loading import load_model, load_processor
    from tempsamp.models.policy import build_inputs, generate, render_prompt, response_logprobs

    path = tiny_models("qwen2_5_vl")
    model, proc = load_model(path), load_processor(path)
    video = decode_video(read_records(synth["train_jsonl"])[0][0].video,
                         VideoParams(fps=1.0, max_frames=8, min_pixels=3136, max_pixels=6272, patch_size=14))
    inp = build_inputs(proc, render_prompt(proc, build_problem("the red square")), video)
    ids, mask, lp_gen = generate(model, inp, n=2, max_new_tokens=6, seed=0)
    with torch.no_grad():
        lp = response_logprobs(model, inp, ids, mask)
        model.model.get_rope_index = type(model.model).get_rope_index.__get__(model.model)
        lp_tf = response_logprobs(model, inp, ids, mask)
    assert (lp - lp_gen).abs().max() < 1e-4
    assert (lp - lp_tf).abs().max() > 1e-3


@pytest.mark.parametrize("family", ["qwen3_vl"])
def test_other_families_untouched(tiny_models, family):
    from tempsamp.models.loading import load_model
    from tempsamp.models.mrope import PATCHED_ATTR

    assert not getattr(load_model(tiny_models(family)).model, PATCHED_ATTR, False)
