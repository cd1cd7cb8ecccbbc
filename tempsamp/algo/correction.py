"""Rollout correction: per-token weights for the rollout-vs-learner mismatch (pure tensor functions).

The rollout engine samples from its own copy of the policy (the behaviour policy: another kernel
stack, another dtype, possibly older weights). Its per-token log-probs travel with the batch
(`GroupBatch.behaviour_logprobs`); the learner's log-probs before the update are `old_logp`. With
log-ratio d = old_logp - behaviour_logp:

- `tis` (truncated importance sampling): w = min(exp(d), cap) per token.
- `mis` (masked importance sampling), level `token`: w = 1 where exp(d) lies in [low, high], else 0;
  level `sequence`: the whole row gets 1 when exp(mean of d over its tokens) (the geometric-mean
  ratio) lies in [low, high], else 0.
- `none`: all ones.

Rows without behaviour log-probs (injected GT rows were never sampled; an engine that returned none)
get weight 1 — the original's ratio 1 for GT rows. Weights are detached and multiply the per-token
PPO loss (after clipping); the loss keeps its token / sequence denominators (verl's convention:
`pg_losses * rollout_is_weights`, then the usual aggregation).
"""

from __future__ import annotations

from typing import Literal

import torch

CorrectionMode = Literal["none", "tis", "mis"]
MisLevel = Literal["token", "sequence"]


def rollout_correction(old_logp: torch.Tensor, behaviour_logp: torch.Tensor, mask: torch.Tensor,
                       has_behaviour: torch.Tensor, mode: CorrectionMode = "none", cap: float = 2.0,
                       low: float = 0.5, high: float = 2.0, level: MisLevel = "token"
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token weights (B, L) and a bool (B, L) `limited` map: tokens whose weight the correction
    limited (tis: the ratio reached the cap; mis: masked to 0). Both detached, in old_logp's dtype.

    old_logp / behaviour_logp / mask: (B, L); has_behaviour: (B,) bool. Padding positions (mask 0)
    and rows without behaviour log-probs get weight 1 and are never `limited`."""
    if mode not in ("none", "tis", "mis"):
        raise ValueError(f"unknown rollout_correction {mode!r} (none | tis | mis)")
    if level not in ("token", "sequence"):
        raise ValueError(f"unknown mis_level {level!r} (token | sequence)")
    with torch.no_grad():
        old_logp = old_logp.detach()
        dtype = old_logp.dtype
        ones = torch.ones_like(old_logp)
        if mode == "none":
            return ones, torch.zeros_like(old_logp, dtype=torch.bool)
        m = mask.to(old_logp.device).bool()
        valid = m & has_behaviour.to(old_logp.device).bool()[:, None]
        d = (old_logp - behaviour_logp.to(old_logp.device, dtype)).clamp(-20.0, 20.0)
        d = torch.where(valid, d, torch.zeros_like(d))
        if mode == "tis":
            ratio = torch.exp(d)
            w = ratio.clamp(max=cap)
            limited = valid & (ratio >= cap)
        elif level == "token":
            ratio = torch.exp(d)
            keep = (ratio >= low) & (ratio <= high)
            w = keep.to(dtype)
            limited = valid & ~keep
        else:
            n = valid.sum(-1)
            seq_ratio = torch.exp(d.sum(-1) / n.clamp_min(1).to(dtype))
            keep = ((seq_ratio >= low) & (seq_ratio <= high)) | (n == 0)
            w = keep.to(dtype)[:, None].expand_as(d)
            limited = valid & ~keep[:, None]
        w = torch.where(valid, w, ones)
    return w, limited


def mismatch_terms(old_logp: torch.Tensor, behaviour_logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token |d| and the k3 estimate of KL(behaviour || learner), d = old_logp - behaviour_logp:
    with r = exp(d) (learner / behaviour, samples drawn from the behaviour policy), k3 = (r - 1) - log r."""
    d = (old_logp.detach() - behaviour_logp.to(old_logp.device, old_logp.dtype)).clamp(-20.0, 20.0)
    return d.abs(), torch.expm1(d) - d
