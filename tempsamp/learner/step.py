"""The PPO-clip training step of one learner rank, its micro/mini-batch plan, and the LR schedule.

Each rank takes every world-th prompt group; micro-batches are cut by a token budget; all ranks run
the same number of micro-batches (FSDP collectives must line up), padding with zero-weight ones.
The micro-batches are split into `mini_batches_per_step` contiguous chunks, one optimizer step each.

Zero-advantage rows (a GRPO group whose rows all scored the same) contribute exactly 0 to the PPO loss
and its gradient; without a KL term the step skips their forward/backward (`run_rows`). The plan, the
mini-batch chunks and the loss denominators are those of the full batch, so the step is the same
step; per chunk every rank then runs the cross-rank maximum of its non-empty micro-batches.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from ..algo.batch import TrainBatch
from ..algo.correction import mismatch_terms, rollout_correction
from ..algo.grpo import kl_penalty, policy_loss
from ..config import AlgorithmConfig, LearnerConfig
from ..models.policy import build_inputs, response_logprobs, response_scores
from ..models.shared_prefix import shared_mode
from .sharding import count_max, full_tensor, max_all, sum_all

log = logging.getLogger(__name__)


def lr_lambda(warmup_steps: int, total_steps: int, schedule: str):
    """LR multiplier per scheduler step: linear warmup from 0 (step / warmup_steps for step <
    warmup_steps: the first step trains at lr 0, as EasyR1/verl do), then constant or cosine decay to 0."""
    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return step / warmup_steps
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
                  rank: int, prefix_lens: Mapping[int, int] | None = None) -> list[tuple[int, slice]]:
    """[(group_idx, row_slice)] for this rank, group by group, each within `micro_batch_tokens` (at
    least one row). `rows[gi]`: responses in group gi; `seq_lens[gi]`: prompt + padded response
    length, needed only for this rank's groups. Without `prefix_lens` a micro-batch costs
    rows * seq_len tokens; with `prefix_lens[gi]` (the prompt length, shared-prefix packing) it costs
    prefix + rows * (seq_len - prefix): the prompt is in the packed sequence once."""
    out = []
    for gi, n in enumerate(rows):
        if gi % world != rank:
            continue
        seq = seq_lens[gi]
        if prefix_lens is not None:
            pre = prefix_lens[gi]
            per = max(1, (micro_batch_tokens - pre) // max(seq - pre, 1))
        else:
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


def run_rows(advantages: Sequence[np.ndarray], micro: list[tuple[int, slice]], skip_zero_adv: bool) -> list[np.ndarray]:
    """The rows each micro-batch of `micro` runs: all of its slice, or with `skip_zero_adv` only the
    rows whose advantage is not 0 (those contribute exactly 0 loss and 0 gradient without a KL term).
    `advantages[gi]`: group gi's (n,) advantages."""
    out = []
    for gi, sl in micro:
        idx = np.arange(sl.start, sl.stop)
        if skip_zero_adv:
            idx = idx[np.asarray(advantages[gi])[sl] != 0]
        out.append(idx)
    return out


def run_schedule(plan: "StepPlan", rows: list[np.ndarray], run_max: Sequence[float]) -> list[list[int | None]]:
    """Per chunk, the micro-batch positions this rank runs: its non-empty micro-batches of the chunk,
    then None (a zero-weight dummy) up to `run_max[c]`, the cross-rank maximum of non-empty ones."""
    out = []
    for c in range(plan.chunks):
        lo, hi = plan.span(c)
        real = [k for k in range(lo, min(hi, len(plan.micro))) if len(rows[k])]
        out.append(real + [None] * (int(run_max[c]) - len(real)))
    return out


def plan_chunks(micro: list[tuple[int, slice]], n_micro: int, mini_batches_per_step: int) -> StepPlan:
    """Split `n_micro` micro-batch positions (the cross-rank maximum of len(micro)) into
    max(1, mini_batches_per_step) contiguous chunks of ceil(n_micro / chunks)."""
    chunks = max(1, mini_batches_per_step)
    per_chunk = math.ceil(n_micro / chunks) if n_micro else 0
    return StepPlan(micro=micro, n_micro=n_micro, chunks=chunks, per_chunk=per_chunk)


# ---- the step -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Correction:
    """The resolved rollout correction (`effective_recipe(cfg)`: auto already decided)."""
    mode: str = "none"  # none | tis | mis
    tis_cap: float = 2.0
    mis_low: float = 0.5
    mis_high: float = 2.0
    mis_level: str = "token"  # token | sequence

    @classmethod
    def from_recipe(cls, rc) -> "Correction":
        return cls(mode=rc.rollout_correction, tis_cap=rc.tis_cap, mis_low=rc.mis_bounds[0],
                   mis_high=rc.mis_bounds[1], mis_level=rc.mis_level)


def _nan_div(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _finite_or_nan(x: float) -> float:
    return x if math.isfinite(x) else float("nan")


def ppo_step(model, ref, processor, opt, sched, params: list[torch.Tensor], batch: TrainBatch, videos: dict,
             lc: LearnerConfig, ac: AlgorithmConfig, *, world: int, rank: int, device: torch.device,
             step: int, temperature: float = 1.0, correction: Correction | None = None,
             skip_zero_adv: bool = True, sampling: tuple[int, float] = (-1, 1.0)) -> dict:
    """One optimizer step per mini-batch (default 1), `lc.ppo_epochs` times, over the rollout batch,
    then one scheduler step. `videos`: key -> sample; `ref`: frozen reference model for the KL term
    (None = no KL); `params`: what the grad norm is clipped over; `step`: the learner step (for the
    log); `temperature`: the sampling temperature, at which every log-prob (loss, old, reference) is
    computed; `sampling`: the engines' (top_k, top_p) — the behaviour log-probs are of the filtered,
    renormalised distribution, so the mismatch and the correction weights compare them with the
    learner's log-probs under the same filter (the loss itself stays on the unfiltered policy at
    `temperature`, as in the original); `correction`: rollout correction weights on the per-token
    loss (None = none);
    `skip_zero_adv`: skip zero-advantage rows (only without a reference model: the KL term needs them).

    Returns the step's metrics, reduced over ranks. Besides loss / clipfrac / kl / grad_norm:
    mismatch_abs_mean, mismatch_k3 (k3 estimate of KL(behaviour || learner)), mismatch_abs_max over the
    sampled tokens that carry behaviour log-probs (d = learner log-prob before the update - behaviour
    log-prob); is_weight_mean / _max / _min and is_clipped_frac of the applied correction weights on
    those tokens (tis: share at the cap; mis: share masked; none: weights 1); entropy (mean over non-GT
    response tokens, at `temperature`); zero_adv_groups; rows_skipped. NaN where nothing was measured.
    With skipping, gt_logp_per_token, onpolicy_logp_per_token, entropy and the mismatch / weight
    statistics cover the rows actually run (zero-advantage rows are left out of them)."""
    t0 = time.time()
    corr = correction or Correction()
    model.train()
    inputs = {gi: build_inputs(processor, batch.groups[gi].prompt_text, videos[batch.groups[gi].key])
              for gi in rank_groups(len(batch.groups), world, rank)}
    # shared prefix: the prompt + video is encoded once per micro-batch of a group (models/shared_prefix.py);
    # when the whole prefix is packed once, the token budget counts it once
    shared = lc.shared_prefix
    packed = shared and shared_mode(model) == "packed"
    micro = micro_batches([g.response_ids.shape[0] for g in batch.groups],
                          {gi: inputs[gi].length + batch.groups[gi].response_ids.shape[1] for gi in inputs},
                          lc.micro_batch_tokens, world, rank,
                          prefix_lens={gi: inputs[gi].length for gi in inputs} if packed else None)
    plan = plan_chunks(micro, count_max(len(micro), world, device), lc.mini_batches_per_step)
    chunks = plan.chunks
    total_tokens = max(1, batch.total_tokens)
    skip = skip_zero_adv and ref is None
    rows = run_rows([g.advantages for g in batch.groups], micro, skip)
    # mini-batches: contiguous chunks of each rank's micro-batches, one optimizer step each; the loss
    # of a chunk is its token (or sequence) mean over all ranks, so each step's gradient - and the
    # grad-norm clip - is on the scale of one mini-batch, as with one mini-batch per step. The counts
    # are those of the full chunk, skipped rows included.
    counts = [0.0] * (2 * chunks)
    for k, (gi, sl) in enumerate(micro):
        c = plan.chunk_of(k)
        counts[c] += float(batch.groups[gi].response_mask[sl].sum())
        counts[chunks + c] += float(batch.groups[gi].response_mask[sl].shape[0])
    counts = sum_all(counts, world, device)
    # FSDP averages gradients over ranks: scale so the sum over ranks is the global mean.
    denoms = [max(1.0, counts[c]) / world for c in range(chunks)]
    seq_denoms = [max(1.0, counts[chunks + c]) / world for c in range(chunks)]
    # every rank runs, per chunk, the most non-empty micro-batches any rank has (FSDP collectives)
    own = [float(sum(1 for k in range(*plan.span(c)) if k < len(micro) and len(rows[k]))) for c in range(chunks)]
    schedule = run_schedule(plan, rows, max_all(own, world, device))
    dummy_gi = next(iter(inputs)) if inputs else 0

    def rows_of(k):
        """(group, inputs, row indices) of schedule entry k (None: the zero-weight dummy)."""
        gi, idx = (dummy_gi, np.arange(1)) if k is None else (micro[k][0], rows[k])
        g = batch.groups[gi]
        return g, inputs[gi] if gi in inputs else build_inputs(processor, g.prompt_text, videos[g.key]), idx

    metrics = {"loss": 0.0, "clipfrac": 0.0, "kl": 0.0}
    acc = dict.fromkeys(("gt_lp", "gt_tok", "on_lp", "on_tok", "ent", "ent_tok", "mm_abs", "mm_k3", "mm_tok",
                         "w", "w_clip"), 0.0)
    mx = [-math.inf, -math.inf, -math.inf]  # mismatch_abs_max, is_weight_max, -is_weight_min
    need_old = lc.ppo_epochs > 1 or lc.mini_batches_per_step > 1
    old = {}
    if need_old:
        with torch.no_grad():
            for entries in schedule:
                for k in entries:
                    g, inp, idx = rows_of(k)
                    sc = response_scores(model, inp, torch.as_tensor(g.response_ids[idx]),
                                         torch.as_tensor(g.response_mask[idx]), temperature, False, *sampling,
                                         shared_prefix=shared)
                    if k is not None:
                        old[k] = (sc.logprobs, sc.sampled_logprobs)
    updates = 0
    gnorm = 0.0
    for epoch in range(lc.ppo_epochs):
        for c in range(chunks):
            lo, hi = plan.span(c)
            if lo >= hi and c > 0:
                break
            for k in schedule[c]:
                dummy = k is None
                g, inp, idx = rows_of(k)
                ids = torch.as_tensor(g.response_ids[idx])
                mask = torch.as_tensor(g.response_mask[idx])
                sc = response_scores(model, inp, ids, mask, temperature, True, *sampling, shared_prefix=shared)
                lp, ent = sc.logprobs, sc.entropy
                m = mask.to(lp.device).to(lp.dtype)
                old_lp = old[k][0].to(lp.device) if (need_old and not dummy) else lp.detach()
                # the learner's pre-update log-probs under the engines' top-k / top-p (vs behaviour)
                old_sampled = old[k][1].to(lp.device) if (need_old and not dummy) else sc.sampled_logprobs
                adv = torch.as_tensor(g.advantages[idx]).to(lp.device)
                weights = None
                if not dummy:
                    beh = torch.as_tensor(g.behaviour_logprobs[idx]).to(lp.device)
                    has_beh = torch.as_tensor(g.has_behaviour[idx]).to(lp.device)
                    if corr.mode != "none":
                        weights, limited = rollout_correction(old_sampled, beh, m, has_beh, corr.mode, corr.tis_cap,
                                                              corr.mis_low, corr.mis_high, corr.mis_level)
                loss, pm = policy_loss(lp, old_lp, adv, m, ac.clip_ratio_low, ac.clip_ratio_high,
                                       ac.clip_ratio_dual, ac.loss_agg_mode, global_tokens=denoms[c],
                                       global_seqs=seq_denoms[c], weights=weights)
                if ref is not None and not dummy:
                    with torch.no_grad():
                        ref_lp = response_logprobs(ref, inp, ids, mask, temperature=temperature, shared_prefix=shared)
                    kl = (kl_penalty(lp, ref_lp, ac.kl_type) * m).sum() / denoms[c]
                    loss = loss + ac.kl_coef * kl
                    metrics["kl"] += float(kl.detach()) / world / max(1, lc.ppo_epochs)
                if not dummy:
                    with torch.no_grad():
                        gmask = m * torch.as_tensor(g.is_gt[idx]).to(lp.device)[:, None].to(m.dtype)
                        acc["gt_lp"] += float((lp * gmask).sum())
                        acc["gt_tok"] += float(gmask.sum())
                        acc["on_lp"] += float((lp * (m - gmask)).sum())
                        acc["on_tok"] += float((m - gmask).sum())
                        acc["ent"] += float((ent * (m - gmask)).sum())
                        acc["ent_tok"] += float((m - gmask).sum())
                        smask = (m * has_beh[:, None].to(m.dtype)).bool()  # sampled tokens with behaviour
                        if epoch == 0 and bool(smask.any()):
                            # old log-probs and behaviour are fixed over epochs: measure them once
                            d_abs, k3 = mismatch_terms(old_sampled, beh)
                            w = weights if weights is not None else torch.ones_like(old_lp)
                            acc["mm_abs"] += float(d_abs[smask].sum())
                            acc["mm_k3"] += float(k3[smask].sum())
                            acc["mm_tok"] += float(smask.sum())
                            acc["w"] += float(w[smask].sum())
                            if weights is not None:
                                acc["w_clip"] += float(limited[smask].sum())
                            mx[0] = max(mx[0], float(d_abs[smask].max()))
                            mx[1] = max(mx[1], float(w[smask].max()))
                            mx[2] = max(mx[2], -float(w[smask].min()))
                if dummy:
                    loss = loss * 0.0
                else:
                    # local loss is scaled by world (FSDP averages grads); report this rank's share
                    metrics["loss"] += float(loss.detach()) / world / max(1, lc.ppo_epochs)
                    metrics["clipfrac"] += pm["clipfrac"] * float(m.sum()) / total_tokens / max(1, lc.ppo_epochs)
                loss.backward()
            if not schedule[c] and lo < hi:
                # every row of this mini-batch was skipped on every rank: the unskipped step's gradient
                # is exactly 0, and the optimizer still steps on it (weight decay, Adam moments)
                for p in params:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
            gnorm = torch.nn.utils.clip_grad_norm_(params, lc.grad_clip)
            gnorm = float(full_tensor(gnorm))
            if math.isfinite(gnorm):
                opt.step()
            else:
                log.warning("rank %d step %d: non-finite grad norm, update skipped", rank, step)
            opt.zero_grad(set_to_none=True)
            updates += 1
    sched.step()
    keys = list(acc)
    run = float(sum(len(r) for r in rows))
    planned = float(sum(sl.stop - sl.start for _, sl in micro))
    red = sum_all([acc[k] for k in keys] + [metrics["loss"], metrics["clipfrac"], metrics["kl"], planned - run],
                  world, device)
    acc = dict(zip(keys, red[:len(keys)]))
    metrics["loss"], metrics["clipfrac"], metrics["kl"], skipped = red[len(keys):]
    mx = max_all(mx, world, device)
    per_epoch = max(1, updates // max(1, lc.ppo_epochs))  # each mini-batch's loss is its own mean
    metrics["loss"] /= per_epoch
    metrics["kl"] /= per_epoch
    metrics["gt_logp_per_token"] = _nan_div(acc["gt_lp"], acc["gt_tok"])
    metrics["onpolicy_logp_per_token"] = _nan_div(acc["on_lp"], acc["on_tok"])
    metrics["entropy"] = _nan_div(acc["ent"], acc["ent_tok"])
    metrics["mismatch_abs_mean"] = _nan_div(acc["mm_abs"], acc["mm_tok"])
    metrics["mismatch_k3"] = _nan_div(acc["mm_k3"], acc["mm_tok"])
    metrics["mismatch_abs_max"] = _finite_or_nan(mx[0])
    metrics["is_weight_mean"] = _nan_div(acc["w"], acc["mm_tok"])
    metrics["is_weight_max"] = _finite_or_nan(mx[1])
    metrics["is_weight_min"] = _finite_or_nan(-mx[2])
    metrics["is_clipped_frac"] = _nan_div(acc["w_clip"], acc["mm_tok"])
    metrics["zero_adv_groups"] = (float(np.mean([not np.any(g.advantages) for g in batch.groups]))
                                  if batch.groups else float("nan"))
    metrics["rows_skipped"] = skipped
    metrics.update({"grad_norm": gnorm, "lr": sched.get_last_lr()[0], "updates": updates,
                    "micro_batches": len(micro), "micro_batches_run": sum(len(r) > 0 for r in rows),
                    "learn_s": time.time() - t0})
    return metrics
