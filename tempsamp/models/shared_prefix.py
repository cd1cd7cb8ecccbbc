"""Shared-prefix scoring: a group's prompt + video is encoded once for all of its n responses.

GRPO scores n responses of one prompt. The unshared forward (`policy.response_scores` with
`shared_prefix=False`) repeats the video pixels and the prompt once per row, so the vision tower
runs n times and every decoder layer processes the (long) prefix n times. Two exact ways to share:

* "packed" (full-attention families: Qwen2.5-VL, Qwen3-VL; sdpa or eager attention): ONE sequence
  [prefix, response_1, ..., response_n] with a 4-D block mask — prefix tokens attend causally to the
  prefix, a response token to the whole prefix and causally to its own response, never to another
  response — and the 3-D M-RoPE positions of the unshared computation (every response continues at the
  prefix's positions, computed by the model's own `get_rope_index`). Every response token sees exactly
  the keys/values it sees unshared, at the same positions; the prefix's hidden states get the sum of
  the n responses' gradients, as the n copies do unshared. The vision tower runs once, every layer runs
  once over the prefix; it is one ordinary forward of the root module, so FSDP2, gradient
  checkpointing and micro-batching are unchanged (the micro-batch plan counts the packed tokens).
  A response's last token predicts nothing we score, so it is not packed.
* "vision" (Qwen3.5 and any family on flash-attention 2): the vision tower runs once and its output
  is reused for the n rows; the decoder still runs n rows of prompt + response. Packing is not exact
  for Qwen3.5: its Gated-DeltaNet (linear attention) layers carry a recurrent state along the sequence,
  so a packed response would be conditioned on the responses before it (no mask can stop that), and
  flash-attention 2 takes no arbitrary mask.

Why not the `prefix-grouper` package (verl's `use_prefix_grouper`): it replaces the attention function
for packed [prefix, suffixes] rows and leaves the position ids to the caller — so it would be exact here
only with the positions below — but it materialises the prefix keys/values once per response in every
layer (saved for backward), it has no answer for linear-attention layers, and its 0.0.1 release predates
the transformers 5 attention interface we run on. transformers' own 4-D mask path needs no new code in
the attention layers and is the one the unshared forward already takes (padding makes sdpa a masked
call there too).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Sequence

import torch

PACKED_ATTN = ("sdpa", "eager")


def _text_config(model):
    cfg = model.config
    return getattr(cfg, "text_config", cfg)


def shared_mode(model) -> str:
    """How this model shares a group's prefix: "packed" (prefix once through every layer) when every
    decoder layer is full attention and the attention takes a 4-D mask (sdpa, eager); "vision" (the
    vision tower once) otherwise — linear-attention layers (Qwen3.5) or flash-attention 2."""
    tc = _text_config(model)
    layer_types = getattr(tc, "layer_types", None) or ["full_attention"]
    attn = getattr(tc, "_attn_implementation", None) or getattr(model.config, "_attn_implementation", "eager")
    if all(t == "full_attention" for t in layer_types) and attn in PACKED_ATTN:
        return "packed"
    return "vision"


def group_tokens(prefix_len: int, rows: int, response_len: int, mode: str) -> int:
    """Decoder tokens of one forward over `rows` responses (padded to `response_len`) of one prompt:
    prefix + rows x response when packed, rows x (prefix + response) otherwise."""
    if mode == "packed":
        return prefix_len + rows * response_len
    return rows * (prefix_len + response_len)


def response_lengths(response_mask: torch.Tensor) -> list[int]:
    """Each row's response length; the mask must be 1 on a prefix of the row and 0 after it (what
    `pad_responses` and generation produce)."""
    m = response_mask.long()
    lens = m.sum(1)
    pos = torch.arange(m.shape[1])[None, :]
    if not torch.equal(m, (pos < lens[:, None]).long()):
        bad = int(((m != (pos < lens[:, None]).long()).any(1)).nonzero()[0, 0])
        raise ValueError(f"response_mask row {bad}: expected 1s then 0s (right padding), got {m[bad].tolist()}")
    return lens.tolist()


@dataclass(frozen=True)
class PackedLayout:
    """Where everything sits in the packed sequence [prefix, r_1[:len_1-1], ..., r_n[:len_n-1]]."""

    prefix_len: int
    lengths: tuple[int, ...]
    starts: tuple[int, ...]  # packed index of each response's first token
    total: int  # packed length

    @classmethod
    def of(cls, prefix_len: int, lengths: Sequence[int]) -> "PackedLayout":
        if prefix_len < 1:
            raise ValueError(f"prefix length must be >= 1, got {prefix_len}")
        starts, at = [], prefix_len
        for n in lengths:
            starts.append(at)
            at += max(int(n) - 1, 0)
        return cls(prefix_len, tuple(int(n) for n in lengths), tuple(starts), at)

    def segments(self) -> torch.Tensor:
        """(T,) 0 on the prefix, i + 1 on response i's tokens."""
        seg = torch.zeros(self.total, dtype=torch.long)
        for i, (s, n) in enumerate(zip(self.starts, self.lengths)):
            seg[s:s + max(n - 1, 0)] = i + 1
        return seg

    def keep(self, width: int) -> torch.Tensor:
        """(B, width) packed index of the hidden state that predicts response token j of row i: the
        prefix's last token for j = 0, the response's own token j - 1 after it; past a row's length
        (padding, masked out later) the prefix's last token."""
        out = torch.full((len(self.lengths), width), self.prefix_len - 1, dtype=torch.long)
        for i, (s, n) in enumerate(zip(self.starts, self.lengths)):
            if n > 1:
                out[i, 1:n] = torch.arange(s, s + n - 1)
        return out

    def gather(self, prefix: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Pack along the last dim: `prefix` (..., P) then each row's first len - 1 entries of `rows`
        (..., B, L) — token ids, token types or position ids."""
        parts = [prefix] + [rows[..., i, :max(n - 1, 0)] for i, n in enumerate(self.lengths)]
        return torch.cat(parts, dim=-1)


def block_mask(seg: torch.Tensor, kind: str, dtype: torch.dtype) -> torch.Tensor:
    """(1, 1, T, T) mask from the segment ids: query q may see key k iff k <= q and k is in the prefix
    or in q's own response. sdpa: boolean (True = attend); eager: additive (0 / dtype's min)."""
    T = seg.shape[0]
    idx = torch.arange(T, device=seg.device)
    allowed = (idx[None, :] <= idx[:, None]) & ((seg[None, :] == 0) | (seg[None, :] == seg[:, None]))
    allowed = allowed[None, None]
    if kind == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=seg.device).masked_fill(~allowed, torch.finfo(dtype).min)


def rope_positions(model, input_ids: torch.Tensor, visual: dict, mm_token_type_ids: torch.Tensor | None,
                   attention_mask: torch.Tensor | None) -> torch.Tensor:
    """The position ids the model would compute itself for these rows: M-RoPE from its own
    `get_rope_index` (our Qwen2.5-VL rule included, models/mrope.py) when there is a video, else
    0..T-1 over the kept tokens (as the text model does for a plain prompt). (3, B, T)."""
    inner = model.model
    grid = visual.get("video_grid_thw")
    if grid is not None and mm_token_type_ids is not None:
        kw = {"video_grid_thw": grid, "mm_token_type_ids": mm_token_type_ids, "attention_mask": attention_mask}
        if "second_per_grid_ts" in visual:
            kw["second_per_grid_ts"] = visual["second_per_grid_ts"]
        pos, _ = inner.get_rope_index(input_ids, **kw)
        return pos
    B, T = input_ids.shape
    return torch.arange(T, device=input_ids.device).view(1, 1, T).expand(3, B, T)


@contextlib.contextmanager
def vision_once(model, rows: int):
    """Inside: the model's video encoder is run on ONE video and its output used for `rows` copies
    (the forward gets the pixels once and `rows` rows of video tokens). Exact: every row gets the same
    features, and their gradients add up as the repeated copies' would."""
    inner = model.model
    original = inner.get_video_features

    def once(pixel_values_videos, video_grid_thw=None, **kwargs):
        out = original(pixel_values_videos, video_grid_thw, **kwargs)
        out.pooler_output = tuple(out.pooler_output) * rows
        if getattr(out, "deepstack_features", None) is not None:  # Qwen3-VL: per-layer features
            out.deepstack_features = [tuple(f) * rows for f in out.deepstack_features]
        return out

    inner.get_video_features = once
    try:
        yield
    finally:
        del inner.get_video_features


def packed_logits(model, input_ids: torch.Tensor, mm_token_type_ids: torch.Tensor | None, visual: dict,
                  response_ids: torch.Tensor, response_mask: torch.Tensor, device) -> torch.Tensor:
    """(B, L, V) logits at the response positions from ONE packed sequence (see module doc)."""
    B, L = response_ids.shape
    P = input_ids.shape[1]
    layout = PackedLayout.of(P, response_lengths(response_mask))
    full_ids = torch.cat([input_ids, response_ids[:1]], dim=1)  # one row: positions of prefix + L tokens
    types = None
    if mm_token_type_ids is not None:
        types = torch.cat([mm_token_type_ids, torch.zeros(1, L, dtype=mm_token_type_ids.dtype)], 1)
    pos = rope_positions(model, full_ids.to(device), {k: v.to(device) for k, v in visual.items()},
                         None if types is None else types.to(device), None)  # (R, 1, P + L)
    R = pos.shape[0]
    pos_rows = pos[:, :, P:].expand(R, B, L)  # a response's positions do not depend on its tokens
    packed_pos = layout.gather(pos[:, 0, :P], pos_rows).unsqueeze(1)  # (R, 1, T)
    ids = layout.gather(input_ids[0], response_ids)[None].to(device)
    attn = _text_config(model)._attn_implementation
    dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    mask = block_mask(layout.segments().to(device), attn, dtype)
    kw = {k: v.to(device) for k, v in visual.items()}
    if types is not None:
        kw["mm_token_type_ids"] = layout.gather(mm_token_type_ids[0], torch.zeros(B, L, dtype=types.dtype))[None].to(device)
    keep = layout.keep(L).reshape(-1).to(device)
    out = model(input_ids=ids, attention_mask=mask, position_ids=packed_pos.to(device), use_cache=False,
                logits_to_keep=keep, **kw)
    return out.logits.reshape(B, L, -1)


def vision_once_logits(model, ids: torch.Tensor, attn: torch.Tensor, mm_token_type_ids: torch.Tensor | None,
                       visual: dict, rows: int, keep: torch.Tensor, device) -> torch.Tensor:
    """(B, L, V) logits of the unshared rows `ids` (B, P + L) with the video encoded once."""
    v1 = {k: v.to(device) for k, v in visual.items()}
    rep = {k: (v.repeat(rows, *([1] * (v.dim() - 1))) if k != "pixel_values_videos" else v) for k, v in v1.items()}
    pos = rope_positions(model, ids, rep, mm_token_type_ids, attn)
    kw = dict(v1)
    if mm_token_type_ids is not None:
        kw["mm_token_type_ids"] = mm_token_type_ids
    ctx = vision_once(model, rows) if "pixel_values_videos" in v1 else contextlib.nullcontext()
    with ctx:
        out = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False, logits_to_keep=keep, **kw)
    return out.logits
