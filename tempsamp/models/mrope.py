"""Qwen2.5-VL multimodal RoPE positions as the model was trained — and as vLLM computes them.

Qwen2.5-VL gives every vision token a 3-D position (t, h, w) with t = frame-group index x
tokens_per_second x seconds_per_grid. The original implementation (Qwen's, transformers 4.x, and
vLLM's `get_mrope_input_positions`) continues the text after a vision segment at
`max(position in that segment) + 1`. transformers 5.x (measured on 5.19) uses one rule for every
Qwen-VL family instead: text continues at `start + max(h, w) / merge`, which ignores the temporal
axis. For a still image the two agree; for a video whose temporal span is larger than its spatial
one (the normal case: 4 frame groups at 1 fps already span t = 0..24 with tokens_per_second 4),
every token after the video — the question and the whole response — sits at a different position
in transformers than in vLLM. The learner then scores responses the rollout engine never produced
(the vLLM-vs-learner log-prob gap we measured on video prompts), and it disagrees with how the
released checkpoints were trained.

`install(model)` replaces the model's `get_rope_index` (one instance, not the class) with the
original rule when a probe shows the loaded transformers uses the other one, so a future
transformers that fixes it is left alone. Qwen3-VL / Qwen3.5 split a video into one segment per
frame (t = 1), where both rules agree, so only Qwen2.5-VL is patched.
"""

from __future__ import annotations

import itertools
import types

import torch

PATCHED_ATTR = "_tempsamp_original_mrope"


def original_rope_index(self, input_ids: torch.LongTensor, mm_token_type_ids: torch.IntTensor,
                        image_grid_thw: torch.LongTensor | None = None, video_grid_thw: torch.LongTensor | None = None,
                        second_per_grid_ts: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                        **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Same signature and outputs as transformers' Qwen2.5-VL `get_rope_index`; vision blocks come
    from the model's own `get_vision_position_ids`, only the text offset after a block differs."""
    merge = self.config.vision_config.spatial_merge_size
    tokens_per_second = self.config.vision_config.tokens_per_second
    device = input_ids.device
    position_ids = torch.zeros(3, *input_ids.shape, dtype=input_ids.dtype, device=device)
    grids = {1: iter(image_grid_thw) if image_grid_thw is not None else None,
             2: iter(video_grid_thw) if video_grid_thw is not None else None}
    seconds = iter(second_per_grid_ts) if second_per_grid_ts is not None else itertools.repeat(1.0)
    deltas = []
    for b in range(input_ids.shape[0]):
        keep = attention_mask[b].bool() if attention_mask is not None else torch.ones_like(input_ids[b], dtype=torch.bool)
        types_b = mm_token_type_ids[b][keep].tolist()
        parts, pos = [], 0
        for kind, group in itertools.groupby(types_b):
            length = len(list(group))
            if kind == 0:
                parts.append(torch.arange(length, device=device).view(1, -1).expand(3, -1) + pos)
                pos += length
                continue
            grid = next(grids[kind])
            interval = tokens_per_second * next(seconds) if kind == 2 else 1
            block = self.get_vision_position_ids(pos, grid, 1, merge, interval, device=device)
            parts.append(block)
            pos = int(block.max()) + 1
        llm = torch.cat(parts, dim=1)
        position_ids[:, b, keep] = llm.to(position_ids.dtype)
        deltas.append(int(llm.max()) + 1 - int(keep.sum()))
    return position_ids, torch.tensor(deltas, device=device).unsqueeze(1)


def uses_spatial_advance(model) -> bool:
    """Probe: does this model's `get_rope_index` start the text after a 4-group video (grid 4x2x2,
    2 s per group) anywhere other than right after the video's largest position?"""
    inner = model.model
    n_vid = 4  # 4 x (2/2) x (2/2) merged tokens
    ids = torch.zeros(1, 2 + n_vid + 2, dtype=torch.long)
    types_ = torch.tensor([[0, 0] + [2] * n_vid + [0, 0]], dtype=torch.int)
    pos, _ = inner.get_rope_index(ids, mm_token_type_ids=types_, video_grid_thw=torch.tensor([[4, 2, 2]]),
                                  second_per_grid_ts=torch.tensor([2.0]))
    video_max = int(pos[:, 0, 2:2 + n_vid].max())
    return int(pos[0, 0, 2 + n_vid]) != video_max + 1


def install(model) -> bool:
    """Use the original rule on this Qwen2.5-VL model when transformers does not. True if patched."""
    if getattr(model.config, "model_type", "") != "qwen2_5_vl":
        return False
    inner = model.model
    if getattr(inner, PATCHED_ATTR, False) or not uses_spatial_advance(model):
        return False
    inner.get_rope_index = types.MethodType(original_rope_index, inner)
    setattr(inner, PATCHED_ATTR, True)
    return True
