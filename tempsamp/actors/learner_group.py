"""The learner ranks as one FSDP group seen from the driver: set up, train a step, save and load
shards. A rank that dies or hangs fails the step (the group cannot admit a new member); the message
says how to continue from the last checkpoint."""

from __future__ import annotations

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from ..errors import StepFailed


class LearnerGroup:
    def __init__(self, learners: list, cfg, model_dir: str, total_steps: int):
        self.actors = learners
        self.timeout = cfg.trainer.step_timeout_s
        self.host = ray.get(learners[0].node_address.remote())
        port = ray.get(learners[0].free_port.remote())
        ray.get([a.setup.remote(cfg, model_dir, i, len(learners), f"{self.host}:{port}", total_steps)
                 for i, a in enumerate(learners)])

    def start_step(self, batch_refs: list, max_groups: int = 0) -> list:
        """Every rank trains on the batch (each takes its share of the groups; several batches of a
        dynamic-sampling step are merged, at most `max_groups` groups); returns the calls."""
        return [a.train_step.remote(*batch_refs, max_groups=max_groups) for a in self.actors]

    def finish_step(self, step: int, calls: list) -> dict:
        """Rank 0's metrics of a started step (all-reduced over ranks)."""
        try:
            return ray.get(calls, timeout=self.timeout)[0]
        except RayActorError as e:
            raise StepFailed(f"step {step}: a learner rank died ({type(e).__name__}); the FSDP group cannot "
                             f"continue — rerun with checkpoint.resume=auto to continue from the last "
                             f"checkpoint") from None
        except GetTimeoutError:
            raise StepFailed(f"step {step}: learner step exceeded trainer.step_timeout_s={self.timeout}s") from None

    def save(self, ckpt_dir: str, export_hf: bool) -> None:
        """Every rank writes its shard into `ckpt_dir`; with `export_hf`, rank 0 also a plain HF folder."""
        ray.get([a.save_shard.remote(ckpt_dir) for a in self.actors], timeout=self.timeout)
        if export_hf:
            ray.get([a.export_hf.remote(f"{ckpt_dir}/actor") for a in self.actors], timeout=self.timeout)

    def load(self, ckpt_dir: str) -> list[int]:
        """Load every rank's shard; returns the step each rank was saved at."""
        return ray.get([a.load_shard.remote(ckpt_dir) for a in self.actors], timeout=self.timeout)
