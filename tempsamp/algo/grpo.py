"""GRPO with optional GT injection (mix-policy GRPO), as pure tensor functions.

- `group_advantages`: (s - mean) / (std + eps) per group of n rows, unbiased std (RECIPE.md).
- `inject_ground_truth`: replace slot `gt_index` of every group with the GT response tokens + EOS.
- `policy_loss`: PPO-clip with low/high/dual clip; token-mean (default) or seq-mean aggregation;
  optional per-token rollout-correction weights (`algo/correction.py`) multiply the clipped loss.
- `kl_penalty`: optional KL term against a reference policy (off in both original runs).
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import torch

AggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"]


def group_advantages(scores, group_size: int, eps: float = 1e-6) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if group_size < 2:
        raise ValueError("GRPO needs group_size >= 2")
    if s.size % group_size:
        raise ValueError(f"{s.size} scores do not split into groups of {group_size}")
    g = s.reshape(-1, group_size)
    mean = g.mean(axis=1, keepdims=True)
    std = g.std(axis=1, ddof=1, keepdims=True)
    return ((g - mean) / (std + eps)).reshape(-1)


def resolve_gt_index(gt_index: int, group_size: int) -> int:
    idx = gt_index if gt_index >= 0 else group_size + gt_index
    if not 0 <= idx < group_size:
        raise ValueError(f"gt_index {gt_index} outside a group of {group_size}")
    return idx


def gt_row_mask(num_rows: int, group_size: int, gt_index: int = -1) -> np.ndarray:
    idx = resolve_gt_index(gt_index, group_size)
    m = np.zeros(num_rows, dtype=bool)
    m[idx::group_size] = True
    return m


def inject_ground_truth(
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    gt_token_ids: Sequence[Sequence[int]],
    group_size: int,
    eos_token_id: int,
    pad_token_id: int,
    gt_index: int = -1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Replace slot `gt_index` of every group with its prompt's GT tokens + EOS.

    response_ids / response_mask: (B, L) right-padded; gt_token_ids: one token list per group.
    Returns new (ids, mask, is_gt) — widened when a GT response is longer than L; the dropped
    on-policy sample in the GT slot is gone entirely (no leftover tokens or mask bits).
    """
    B, L = response_ids.shape
    if B % group_size:
        raise ValueError(f"{B} rows do not split into groups of {group_size}")
    n_groups = B // group_size
    if len(gt_token_ids) != n_groups:
        raise ValueError(f"need one GT response per group: {n_groups} groups, {len(gt_token_ids)} GT responses")
    idx = resolve_gt_index(gt_index, group_size)
    gts = [list(t) + [eos_token_id] for t in gt_token_ids]
    width = max(L, max(len(t) for t in gts))
    ids = torch.full((B, width), pad_token_id, dtype=response_ids.dtype)
    mask = torch.zeros((B, width), dtype=response_mask.dtype)
    ids[:, :L] = response_ids
    mask[:, :L] = response_mask
    is_gt = torch.zeros(B, dtype=torch.bool)
    for g, toks in enumerate(gts):
        r = g * group_size + idx
        ids[r] = pad_token_id
        mask[r] = 0
        ids[r, : len(toks)] = torch.tensor(toks, dtype=response_ids.dtype)
        mask[r, : len(toks)] = 1
        is_gt[r] = True
    return ids, mask, is_gt


def agg_loss(loss: torch.Tensor, mask: torch.Tensor, mode: AggMode = "token-mean",
             global_tokens: float | None = None, global_seqs: float | None = None) -> torch.Tensor:
    """Aggregate a (B, L) per-token loss. `global_*` let micro-batches sum to the mini-batch mean."""
    mask = mask.to(loss.dtype)
    if mode == "token-mean":
        denom = global_tokens if global_tokens is not None else mask.sum().clamp_min(1.0)
        return (loss * mask).sum() / denom
    per_seq_sum = (loss * mask).sum(-1)
    if mode == "seq-mean-token-mean":
        per_seq = per_seq_sum / mask.sum(-1).clamp_min(1.0)
    elif mode == "seq-mean-token-sum":
        per_seq = per_seq_sum
    else:
        raise ValueError(f"unknown loss_agg_mode {mode!r}")
    denom = global_seqs if global_seqs is not None else max(per_seq.numel(), 1)
    return per_seq.sum() / denom


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    clip_dual: float = 3.0,
    agg_mode: AggMode = "token-mean",
    global_tokens: float | None = None,
    global_seqs: float | None = None,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict]:
    """PPO-clip loss (with dual clip for negative advantages). advantages: (B,) or (B, L).

    `weights` (B, L), detached: rollout-correction weights multiplying each token's clipped loss
    (verl/slime convention); the aggregation's token / sequence denominators do not change. None
    (or all ones) is the plain PPO loss."""
    if advantages.dim() == 1:
        advantages = advantages[:, None].expand_as(logp)
    advantages = advantages.to(logp.dtype)
    log_ratio = (logp - old_logp).clamp(-20.0, 20.0)
    ratio = torch.exp(log_ratio)
    pg1 = -advantages * ratio
    pg2 = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    clipped = torch.maximum(pg1, pg2)
    pg3 = -advantages * clip_dual
    dual = torch.minimum(pg3, clipped)
    per_token = torch.where(advantages < 0, dual, clipped)
    if weights is not None:
        per_token = per_token * weights.detach().to(per_token.dtype)
    loss = agg_loss(per_token, mask, agg_mode, global_tokens, global_seqs)
    with torch.no_grad():
        m = mask.to(logp.dtype)
        n = m.sum().clamp_min(1.0)
        metrics = {
            "clipfrac": float(((pg2 > pg1).to(m.dtype) * m).sum() / n),
            "dual_clipfrac": float((((pg3 < clipped) & (advantages < 0)).to(m.dtype) * m).sum() / n),
            "approx_kl": float((-log_ratio * m).sum() / n),
        }
    return loss, metrics


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "low_var_kl") -> torch.Tensor:
    """Per-token KL estimate of the policy against a reference."""
    if kind == "k1":
        return logp - ref_logp
    if kind == "k2":
        return 0.5 * (logp - ref_logp) ** 2
    if kind == "low_var_kl":
        kl = (ref_logp - logp).clamp(-20.0, 20.0)
        return (torch.exp(kl) - kl - 1.0).clamp(-10.0, 10.0)
    raise ValueError(f"unknown kl_type {kind!r}")
