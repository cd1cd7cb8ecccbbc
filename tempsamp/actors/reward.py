"""RewardActor: IoU+format reward, shaping, GT injection, group advantages (core: algo/reward_core.py)."""

from __future__ import annotations

import ray

from ..algo.batch import TrainBatch
from ..algo.reward_core import RewardCore
from .faults import FaultHooks


@ray.remote
class RewardActor(FaultHooks):
    def __init__(self, model_dir: str, options: dict, filter_groups: bool = False):
        self.core = RewardCore(model_dir, options, filter_groups)

    def ping(self) -> bool:
        return True

    @ray.method(num_returns=2)
    def score_with_metrics(self, step: int, answers: list, prompt_texts: list, videos: list, *rollouts):
        """(batch, its metrics): the driver waits on the small metrics dict and never pulls the batch."""
        batch = self.score(step, answers, prompt_texts, videos, *rollouts)
        return batch, batch.metrics

    def score(self, step: int, answers: list, prompt_texts: list, videos: list, *rollouts) -> TrainBatch:
        """`videos` is a list of ObjectRefs (kept as refs: the learner fetches them); `rollouts` are
        top-level refs of each engine's list[RolloutGroup]."""
        self._maybe_fault("score")
        return self.core.score(step, answers, prompt_texts, videos, [g for part in rollouts for g in part])
