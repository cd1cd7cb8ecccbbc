"""Which prompts a step trains on: a seeded permutation per epoch, resumable by (epoch, index)."""

from __future__ import annotations

import msgspec
import numpy as np


class SamplerState(msgspec.Struct):
    epoch: int = 0
    index: int = 0  # prompts consumed in this epoch


class EpochSampler:
    """Seeded permutation per epoch; drops the last incomplete batch; resumable by (epoch, index)."""

    def __init__(self, n: int, batch: int, seed: int, shuffle: bool = True, state: SamplerState | None = None):
        if n < batch:
            raise ValueError(f"dataset has {n} records, fewer than data.prompts_per_step={batch}")
        self.n, self.batch, self.seed, self.shuffle = n, batch, seed, shuffle
        self.state = state or SamplerState()

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.batch

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng(self.seed + epoch).permutation(self.n)

    def next(self) -> tuple[int, list[int]]:
        if self.state.index + self.batch > self.n:
            self.state = SamplerState(epoch=self.state.epoch + 1, index=0)
        order = self._order(self.state.epoch)
        idx = order[self.state.index: self.state.index + self.batch].tolist()
        epoch = self.state.epoch
        self.state = SamplerState(epoch=epoch, index=self.state.index + self.batch)
        return epoch, idx
