"""The PPO-clip training step of one learner rank, its micro/mini-batch plan, and the LR schedule.

Each rank takes every world-th prompt group; micro-batches are cut by a token budget; all ranks run
the same number of micro-batches (FSDP collectives must line up), padding with zero-weight ones.
The micro-batches are split into `mini_batches_per_step` contiguous chunks, one optimizer step each.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from ..algo.batch import TrainBatch
from ..algo.grpo import kl_penalty, policy_loss
from ..config import AlgorithmConfig, LearnerConfig
from ..models.policy import build_inputs, response_logprobs
from .sharding import count_max, full_tensor, sum_all

log = logging.getLogger(__name__)


def lr_lambda(warmup_steps: int, total_steps: int, schedule: str):
    """LR multiplier per scheduler step: linear warmup, then constant or cosine decay to 0."""
    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "cosine" and total_steps > warmup_steps:
            prog = (step - warmup_steps) / max(1, total_steps - warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, prog)))
        return 1.0

    return f


# ---- micro/mini-batch plan (pure) ----------------------------------------------------------------
def rank_groups(n_groups: int, world: int, rank: int) -> list[int]:
    """The prompt groups rank `rank` trains on: every world-th, starting at its own index."""
    return [gi for gi in range(n_groups) if gi % world == rank]


def micro_batches(rows: Sequence[int], seq_lens: Mapping[int, int], micro_batch_tokens: int, world: int,
                  rank: int) -> list[tuple[int, slice]]:
    """[(group_idx, row_slice)] for this rank, group by group; rows * seq_len <= micro_batch_tokens
    (at least one row). `rows[gi]`: responses in group gi; `seq_lens[gi]`: prompt + padded response
    length, needed only for this rank's groups."""
    out = []
    for gi, n in enumerate(rows):
        if gi % world != rank:
            continue
        seq = seq_lens[gi]
        per = max(1, micro_batch_tokens // max(seq, 1))
        out += [(gi, slice(s, min(n, s + per))) for s in range(0, n, per)]
    return out


@dataclass(frozen=True)
class StepPlan:
    """This rank's micro-batches cut into mini-batch chunks. Every rank runs `n_micro` micro-batches
    (the most any rank has); positions from len(micro) on are zero-weight dummies."""
    micro: list[tuple[int, slice]]
    n_micro: int
    chunks: int
    per_chunk: int

    def chunk_of(self, k: int) -> int:
        """The chunk (mini-batch) micro-batch k belongs to."""
        return min(k // max(1, self.per_chunk), self.chunks - 1)

    def span(self, c: int) -> tuple[int, int]:
        """[lo, hi) micro-batch positions of chunk c (empty past the last micro-batch)."""
        return c * self.per_chunk, min(self.n_micro, (c + 1) * self.per_chunk)


def plan_chunks(micro: list[tuple[int, slice]], n_micro: int, mini_batches_per_step: int) -> StepPlan:
    """Split `n_micro` micro-batch positions (the cross-rank maximum of len(micro)) into
    max(1, mini_batches_per_step) contiguous chunks of ceil(n_micro / chunks)."""
    chunks = max(1, mini_batches_per_step)
    per_chunk = math.ceil(n_micro / chunks) if n_micro else 0
    return StepPlan(micro=micro, n_micro=n_micro, chunks=chunks, per_chunk=per_chunk)


# ---- the step -------------------------------------------------------------------------------------
def ppo_step(model, ref, processor, opt, sched, params: list[torch.Tensor], batch: TrainBatch, videos: dict,
             lc: LearnerConfig, ac: AlgorithmConfig, *, world: int, rank: int, device: torch.device,
             step: int) -> dict:
    """One optimizer step per mini-batch (default 1), `lc.ppo_epochs` times, over the rollout batch,
    then one scheduler step. `videos`: key -> sample; `ref`: frozen reference model for the KL term
    (None = no KL); `params`: what the grad norm is clipped over; `step`: the learner step (for the
    log). Returns the step's metrics, summed over ranks."""
    t0 = time.time()
    model.train()
    inputs = {gi: build_inputs(processor, batch.groups[gi].prompt_text, videos[batch.groups[gi].key])
              for gi in rank_groups(len(batch.groups), world, rank)}
    micro = micro_batches([g.response_ids.shape[0] for g in batch.groups],
                          {gi: inputs[gi].length + batch.groups[gi].response_ids.shape[1] for gi in inputs},
                          lc.micro_batch_tokens, world, rank)
    plan = plan_chunks(micro, count_max(len(micro), world, device), lc.mini_batches_per_step)
    chunks = plan.chunks
    total_tokens = max(1, batch.total_tokens)
    # mini-batches: contiguous chunks of each rank's micro-batches, one optimizer step each; the loss
    # of a chunk is its token (or sequence) mean over all ranks, so each step's gradient - and the
    # grad-norm clip - is on the scale of one mini-batch, as with one mini-batch per step
    counts = [0.0] * (2 * chunks)
    for k, (gi, sl) in enumerate(micro):
        c = plan.chunk_of(k)
        counts[c] += float(batch.groups[gi].response_mask[sl].sum())
        counts[chunks + c] += float(batch.groups[gi].response_mask[sl].shape[0])
    counts = sum_all(counts, world, device)
    # FSDP averages gradients over ranks: scale so the sum over ranks is the global mean.
    denoms = [max(1.0, counts[c]) / world for c in range(chunks)]
    seq_denoms = [max(1.0, counts[chunks + c]) / world for c in range(chunks)]
    metrics = {"loss": 0.0, "clipfrac": 0.0, "kl": 0.0}
    gt_lp_sum, gt_tok, on_lp_sum, on_tok = 0.0, 0.0, 0.0, 0.0
    need_old = lc.ppo_epochs > 1 or lc.mini_batches_per_step > 1
    old = {}
    if need_old:
        with torch.no_grad():
            for k, (gi, sl) in enumerate(micro):
                g = batch.groups[gi]
                old[k] = response_logprobs(model, inputs[gi], torch.as_tensor(g.response_ids[sl]),
                                           torch.as_tensor(g.response_mask[sl]))
    updates = 0
    gnorm = 0.0
    for _ in range(lc.ppo_epochs):
        for c in range(chunks):
            lo, hi = plan.span(c)
            if lo >= hi and c > 0:
                break
            for k in range(lo, hi):
                dummy = k >= len(micro)
                gi, sl = micro[k] if not dummy else (next(iter(inputs)) if inputs else 0, slice(0, 1))
                g = batch.groups[gi]
                ids = torch.as_tensor(g.response_ids[sl])
                mask = torch.as_tensor(g.response_mask[sl])
                inp = inputs[gi] if gi in inputs else build_inputs(processor, g.prompt_text, videos[g.key])
                lp = response_logprobs(model, inp, ids, mask)
                m = mask.to(lp.device).to(lp.dtype)
                old_lp = old[k].to(lp.device) if (need_old and not dummy) else lp.detach()
                adv = torch.as_tensor(g.advantages[sl]).to(lp.device)
                loss, pm = policy_loss(lp, old_lp, adv, m, ac.clip_ratio_low, ac.clip_ratio_high,
                                       ac.clip_ratio_dual, ac.loss_agg_mode, global_tokens=denoms[c],
                                       global_seqs=seq_denoms[c])
                if ref is not None and not dummy:
                    with torch.no_grad():
                        ref_lp = response_logprobs(ref, inp, ids, mask)
                    kl = (kl_penalty(lp, ref_lp, ac.kl_type) * m).sum() / denoms[c]
                    loss = loss + ac.kl_coef * kl
                    metrics["kl"] += float(kl.detach()) / world / max(1, lc.ppo_epochs)
                if not dummy:
                    with torch.no_grad():
                        gmask = m * torch.as_tensor(g.is_gt[sl]).to(lp.device)[:, None].to(m.dtype)
                        gt_lp_sum += float((lp * gmask).sum())
                        gt_tok += float(gmask.sum())
                        on_lp_sum += float((lp * (m - gmask)).sum())
                        on_tok += float((m - gmask).sum())
                if dummy:
                    loss = loss * 0.0
                else:
                    # local loss is scaled by world (FSDP averages grads); report this rank's share
                    metrics["loss"] += float(loss.detach()) / world / max(1, lc.ppo_epochs)
                    metrics["clipfrac"] += pm["clipfrac"] * float(m.sum()) / total_tokens / max(1, lc.ppo_epochs)
                loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(params, lc.grad_clip)
            gnorm = float(full_tensor(gnorm))
            if math.isfinite(gnorm):
                opt.step()
            else:
                log.warning("rank %d step %d: non-finite grad norm, update skipped", rank, step)
            opt.zero_grad(set_to_none=True)
            updates += 1
    sched.step()
    gt_lp_sum, gt_tok, on_lp_sum, on_tok, metrics["loss"], metrics["clipfrac"], metrics["kl"] = sum_all(
        [gt_lp_sum, gt_tok, on_lp_sum, on_tok, metrics["loss"], metrics["clipfrac"], metrics["kl"]], world, device)
    per_epoch = max(1, updates // max(1, lc.ppo_epochs))  # each mini-batch's loss is its own mean
    metrics["loss"] /= per_epoch
    metrics["kl"] /= per_epoch
    metrics["gt_logp_per_token"] = gt_lp_sum / gt_tok if gt_tok else float("nan")
    metrics["onpolicy_logp_per_token"] = on_lp_sum / on_tok if on_tok else float("nan")
    metrics.update({"grad_norm": gnorm, "lr": sched.get_last_lr()[0], "updates": updates,
                    "micro_batches": len(micro), "learn_s": time.time() - t0})
    return metrics
