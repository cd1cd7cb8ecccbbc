"""Reward stage core: score rollouts, inject the GT response, shape, group advantages, metrics.

Pure (no Ray): the RewardPool actor is a thin shell over `build_train_batch`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..config import effective_recipe
from ..reward.grounding import grounding_reward
from ..reward.gt import build_gt_response
from ..reward.shaping import shaped_scores
from ..rollout.base import RolloutGroup
from .grpo import group_advantages, inject_ground_truth


@dataclass
class GroupBatch:
    """One prompt's n rows as the learner consumes them."""

    key: int
    prompt_text: str
    video: Any  # ObjectRef of the decoded VideoSample (or the sample itself outside Ray)
    response_ids: np.ndarray  # (n, L) int64, right-padded
    response_mask: np.ndarray  # (n, L) int64
    advantages: np.ndarray  # (n,) float32
    is_gt: np.ndarray  # (n,) bool
    weight_version: int
    # the engine's log-probs of the sampled tokens under the distribution it sampled from (temperature,
    # top-k / top-p applied: the behaviour policy), aligned with response_ids / response_mask, 0 on
    # padding and on rows without them
    behaviour_logprobs: np.ndarray  # (n, L) float32
    # False for injected GT rows (not sampled) and rows whose engine returned no / too few log-probs
    has_behaviour: np.ndarray  # (n,) bool

    @property
    def tokens(self) -> int:
        return int(self.response_mask.sum())


@dataclass
class TrainBatch:
    groups: list[GroupBatch]
    step: int
    metrics: dict = field(default_factory=dict)

    @property
    def total_tokens(self) -> int:
        return sum(g.tokens for g in self.groups)

    @property
    def rows(self) -> int:
        return sum(len(g.advantages) for g in self.groups)


def reward_options(cfg) -> dict:
    """`build_train_batch`'s reward/advantage keyword arguments from a `Config` (the one mapping);
    GT injection and shaping as `effective_recipe` resolves them (preset of algorithm.name, explicit keys win)."""
    rc = effective_recipe(cfg)
    return dict(n=cfg.rollout.n, gt_injection=rc.gt_injection, gt_index=rc.gt_index,
                format_weight=rc.format_weight, strict_format=cfg.reward.strict_format, shaping=rc.shaping,
                shaping_threshold=rc.shaping_threshold, shaping_alpha=rc.shaping_alpha, adv_eps=rc.adv_eps)


def behaviour_arrays(rows: Sequence[Sequence[int]], logprobs: Sequence[Sequence[float]], is_gt: np.ndarray,
                     width: int) -> tuple[np.ndarray, np.ndarray]:
    """(behaviour_logprobs (B, width) float32, has_behaviour (B,) bool) of the sampled rows: row i's
    first len(rows[i]) engine log-probs, left-aligned like the right-padded response ids. A row has
    them when it is not a GT row, is non-empty, and its engine returned a finite log-prob for each of
    its tokens; other rows are all 0 with has_behaviour False. Call after GT injection (`width`: the
    batch's padded length, which injection may have widened)."""
    out = np.zeros((len(rows), width), dtype=np.float32)
    has = np.zeros(len(rows), dtype=bool)
    for i, (r, lp) in enumerate(zip(rows, logprobs)):
        k = len(r)
        if is_gt[i] or k == 0 or len(lp) < k:
            continue
        vals = np.asarray(lp[:k], dtype=np.float32)
        if not np.isfinite(vals).all():
            continue
        out[i, :k] = vals
        has[i] = True
    return out, has


def build_train_batch(
    groups: Sequence[RolloutGroup],
    answers: Sequence[tuple[float, float]],
    prompt_texts: Sequence[str],
    videos: Sequence[Any],
    *,
    n: int,
    step: int,
    encode: Callable[[str], list[int]],
    eos_id: int,
    pad_id: int,
    gt_injection: bool,
    gt_index: int = -1,
    format_weight: float = 0.1,
    strict_format: bool = False,
    shaping: bool = False,
    shaping_threshold: float = 0.8,
    shaping_alpha: float = 1.0,
    adv_eps: float = 1e-6,
) -> TrainBatch:
    groups = sorted(groups, key=lambda g: g.key)
    if len(groups) != len(answers):
        raise ValueError(f"{len(groups)} rollout groups for {len(answers)} prompts")
    texts: list[str] = []
    rows: list[list[int]] = []
    row_lps: list[list[float]] = []
    for g in groups:
        if len(g.response_ids) != n:
            raise ValueError(f"prompt {g.key}: engine {g.engine} returned {len(g.response_ids)} responses, expected {n}")
        texts += list(g.texts)
        rows += [list(r) for r in g.response_ids]
        lps = list(g.logprobs or [])
        row_lps += [list(lps[i]) if i < len(lps) and lps[i] is not None else [] for i in range(n)]
    L = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), L), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    is_gt = torch.zeros(len(rows), dtype=torch.bool)
    if gt_injection:
        gt_texts = [build_gt_response(a) for a in answers]
        ids, mask, is_gt = inject_ground_truth(ids, mask, [encode(t) for t in gt_texts], n, eos_id, pad_id, gt_index)
        for r in np.flatnonzero(is_gt.numpy()):
            texts[r] = gt_texts[r // n]
    res = [grounding_reward(t, answers[i // n], format_weight, strict_format) for i, t in enumerate(texts)]
    iou = np.array([r.iou for r in res])
    fmt = np.array([r.format for r in res])
    scores = shaped_scores(iou, fmt, format_weight, shaping, shaping_threshold, shaping_alpha)
    adv = group_advantages(scores, n, adv_eps).astype(np.float32)
    gt = is_gt.numpy()
    ids_np, mask_np = ids.numpy(), mask.numpy()
    beh, has_beh = behaviour_arrays(rows, row_lps, gt, ids_np.shape[1])
    out = [
        GroupBatch(key=g.key, prompt_text=prompt_texts[j], video=videos[j],
                   response_ids=ids_np[j * n:(j + 1) * n], response_mask=mask_np[j * n:(j + 1) * n],
                   advantages=adv[j * n:(j + 1) * n], is_gt=gt[j * n:(j + 1) * n], weight_version=g.weight_version,
                   behaviour_logprobs=beh[j * n:(j + 1) * n], has_behaviour=has_beh[j * n:(j + 1) * n])
        for j, g in enumerate(groups)
    ]
    on = ~gt
    lens = mask_np.sum(1)
    m = {
        "reward/score_mean": float(scores.mean()),
        "reward/score_mean_no_gt": float(scores[on].mean()),
        # iou + format_weight * format without shaping: comparable across grpo / tempsamp runs
        "reward/raw_score_mean_no_gt": float((iou + format_weight * fmt)[on].mean()),
        "reward/iou_mean": float(iou.mean()),
        "reward/iou_mean_no_gt": float(iou[on].mean()),
        "reward/format_rate": float(fmt.mean()),
        "reward/format_rate_no_gt": float(fmt[on].mean()),
        "adv/mean": float(adv.mean()),
        "adv/std": float(adv.std()),
        "adv/max": float(adv.max()),
        "adv/min": float(adv.min()),
        "adv/zero_groups": float(np.mean([np.allclose(adv[j * n:(j + 1) * n], 0) for j in range(len(groups))])),
        "response/len_mean_no_gt": float(lens[on].mean()),
        "batch/rows": float(len(rows)),
        "batch/tokens": float(mask_np.sum()),
        "batch/min_weight_version": float(min(g.weight_version for g in groups)),
    }
    first_on = int(np.flatnonzero(on)[0]) if on.any() else 0
    m["sample/text"] = texts[first_on][:200]
    return TrainBatch(groups=out, step=step, metrics=m)
