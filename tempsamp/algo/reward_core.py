"""The reward role's core: score a step's rollout groups into a TrainBatch (IoU + format reward,
shaping, GT injection, group advantages) with the policy's tokenizer. Config -> options:
`algo.batch.reward_options(cfg)`."""

from __future__ import annotations

from .batch import TrainBatch, build_train_batch
from .filtering import keep_informative


class RewardCore:
    def __init__(self, model_dir: str, options: dict, filter_groups: bool = False):
        """`options`: `reward_options(cfg)` (n, GT injection, format weight, shaping, eps);
        `filter_groups`: drop zero-advantage groups from the batch (algorithm.filter_groups)."""
        from ..models.text_tokenizer import TextTokenizer

        tok = TextTokenizer(model_dir)  # no transformers in the reward actor: see models/text_tokenizer.py
        self.encode = tok.encode
        self.eos_id, self.pad_id = tok.eos_id, tok.pad_id
        self.options = options
        self.filter_groups = filter_groups

    def score(self, step: int, answers: list, prompt_texts: list, videos: list, groups: list) -> TrainBatch:
        """`videos` are passed through into the batch untouched (ObjectRefs on the actor path)."""
        batch = build_train_batch(groups, [tuple(a) for a in answers], prompt_texts, videos, step=step,
                                  encode=self.encode, eos_id=self.eos_id, pad_id=self.pad_id, **self.options)
        return keep_informative(batch) if self.filter_groups else batch
