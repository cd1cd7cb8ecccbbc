"""RewardActor: IoU+format reward, shaping, GT injection, group advantages (core: algo/batch.py)."""

from __future__ import annotations

import ray

from ..algo.batch import TrainBatch, build_train_batch
from .faults import FaultHooks


@ray.remote
class RewardActor(FaultHooks):
    def __init__(self, model_dir: str, options: dict):
        """`options`: `reward_options(cfg)` (n, GT injection, format weight, shaping, eps)."""
        from ..models.loading import load_processor
        from ..models.policy import special_ids

        tok = load_processor(model_dir).tokenizer
        self.encode = lambda text: tok.encode(text, add_special_tokens=False)
        self.eos_id, self.pad_id = special_ids(tok)
        self.options = options

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
        groups = [g for part in rollouts for g in part]
        return build_train_batch(
            groups, [tuple(a) for a in answers], prompt_texts, videos, step=step, encode=self.encode,
            eos_id=self.eos_id, pad_id=self.pad_id, **self.options)
