"""The learner ranks as one FSDP group seen from the driver: set up, train a step, save and load
shards. A rank that dies or hangs (or a collective that breaks because a peer did) fails the call
with `LearnerFailed`: the group cannot admit a new member, so the driver restarts it whole
(`actors/recovery.py`) or stops with a resume hint."""

from __future__ import annotations

import time

import ray

from ..cluster import classify, error_text
from ..errors import LearnerFailed


def _broken_collective(exc) -> bool:
    """A rank's call raised because a collective failed (a peer died, an NCCL/gloo timeout)."""
    cause = getattr(exc, "cause", None) or exc
    return type(cause).__name__ == "DistBackendError" or "Connection closed by peer" in str(cause)


class LearnerGroup:
    def __init__(self, learners: list, cfg, model_dir: str, total_steps: int):
        self.actors = learners
        self.total_steps = total_steps
        self.timeout = cfg.trainer.step_timeout_s
        self.host = ray.get(learners[0].node_address.remote())
        port = ray.get(learners[0].free_port.remote())
        ray.get([a.setup.remote(cfg, model_dir, i, len(learners), f"{self.host}:{port}", total_steps)
                 for i, a in enumerate(learners)])

    def _wait(self, calls: list, what: str) -> list:
        """Every rank's result of `calls`; the first rank that dies (or breaks a collective) fails them
        all at once, and so does the deadline (trainer.step_timeout_s); other errors propagate."""
        deadline = time.monotonic() + self.timeout
        index = {c: i for i, c in enumerate(calls)}
        pending = list(calls)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                stuck = sorted(index[c] for c in pending)
                raise LearnerFailed(f"{what}: learner rank(s) {stuck} did not finish within "
                                    f"trainer.step_timeout_s={self.timeout:g}s")
            try:
                ray.get(ready[0])
            except Exception as e:
                if classify(e) == "dead" or _broken_collective(e):
                    raise LearnerFailed(f"{what}: a learner rank died (rank {index[ready[0]]}: {error_text(e)})") \
                        from None
                raise
        return ray.get(calls)

    def start_step(self, batch_refs: list, max_groups: int = 0) -> list:
        """Every rank trains on the batch (each takes its share of the groups; several batches of a
        dynamic-sampling step are merged, at most `max_groups` groups); returns the calls."""
        return [a.train_step.remote(*batch_refs, max_groups=max_groups) for a in self.actors]

    def finish_step(self, step: int, calls: list) -> dict:
        """Rank 0's metrics of a started step (all-reduced over ranks)."""
        return self._wait(calls, f"step {step}")[0]

    def save(self, ckpt_dir: str, export_hf: bool) -> None:
        """Every rank writes its shard into `ckpt_dir`; with `export_hf`, rank 0 also a plain HF folder."""
        self._wait([a.save_shard.remote(ckpt_dir) for a in self.actors], f"checkpoint {ckpt_dir}")
        if export_hf:
            self._wait([a.export_hf.remote(f"{ckpt_dir}/actor") for a in self.actors], f"export {ckpt_dir}")

    def load(self, ckpt_dir: str) -> list[int]:
        """Load every rank's shard; returns the step each rank was saved at."""
        return self._wait([a.load_shard.remote(ckpt_dir) for a in self.actors], f"load {ckpt_dir}")
