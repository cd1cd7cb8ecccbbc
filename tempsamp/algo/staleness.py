"""The staleness rule of the overlapped schedule: a step's rollouts may lag the learner by at most
trainer.max_staleness weight versions."""

from __future__ import annotations

from ..errors import StepFailed


def check_staleness(step: int, learner_version: int, rollout_version: int, max_staleness: int) -> int:
    """The weight-version lag of a step's rollouts; raises StepFailed when it exceeds max_staleness."""
    lag = learner_version - rollout_version
    if lag > max_staleness:
        raise StepFailed(f"step {step}: rollouts sampled with weight version {rollout_version}, learner at "
                         f"{learner_version}: lag {lag} > trainer.max_staleness={max_staleness}")
    if lag < 0:
        raise StepFailed(f"step {step}: rollouts claim weight version {rollout_version}, newer than the "
                         f"learner's {learner_version}")
    return lag
