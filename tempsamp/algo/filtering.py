"""DAPO-style dynamic sampling (`algorithm.filter_groups`, an ablation arm): a group whose rows all
scored the same has zero advantage everywhere and teaches nothing; drop it and fill the batch with
groups from more prompts. GT injection is the other answer to the same problem (the GT row makes
every group informative), so filtering a TempSamp batch rarely drops anything."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .batch import GroupBatch, TrainBatch


def informative(group: GroupBatch) -> bool:
    """True when some row of the group has a non-zero advantage."""
    return bool(np.any(group.advantages != 0))


def keep_informative(batch: TrainBatch) -> TrainBatch:
    """The batch without its zero-advantage groups (metrics kept, `filter/kept_groups` added)."""
    kept = [g for g in batch.groups if informative(g)]
    return TrainBatch(groups=kept, step=batch.step,
                      metrics={**batch.metrics, "filter/kept_groups": float(len(kept)),
                               "filter/kept_rows": float(sum(len(g.advantages) for g in kept)),
                               "filter/kept_tokens": float(sum(g.tokens for g in kept))})


def merge_batches(batches: list[TrainBatch], max_groups: int) -> TrainBatch:
    """One training batch of the first `max_groups` groups of `batches`, in order; group keys are
    renumbered so they stay unique (the learner keys videos by group key)."""
    groups = [g for b in batches for g in b.groups][:max_groups]
    out = []
    for k, g in enumerate(groups):
        if g.key != k:
            g = replace(g, key=k)
        out.append(g)
    return TrainBatch(groups=out, step=batches[0].step if batches else 0,
                      metrics=dict(batches[0].metrics) if batches else {})
