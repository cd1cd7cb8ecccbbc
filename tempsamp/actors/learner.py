"""LearnerActor: one FSDP2 rank, a thin shell over `learner.core.LearnerCore`."""

from __future__ import annotations

import os

import ray

from ..sync.weights import free_port, make_group
from ..algo.filtering import merge_batches
from .faults import FaultHooks


@ray.remote
class LearnerActor(FaultHooks):
    def __init__(self):
        self.core = None
        self.pg = None

    def node_address(self) -> str:
        """This node's address as Ray knows it (127.0.0.1 on the loopback-only local cluster)."""
        return ray.util.get_node_ip_address()

    def free_port(self) -> int:
        return free_port()

    def ping(self) -> dict:
        return {"pid": os.getpid(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "")}

    def setup(self, cfg, model_dir: str, rank: int, world: int, dist_addr: str, total_steps: int) -> bool:
        from ..learner.core import LearnerCore

        self.core = LearnerCore(cfg, model_dir, rank, world, dist_addr, total_steps)
        return True

    def train_step(self, *batches, max_groups: int = 0) -> dict:
        """One step on the batch (several batches of a dynamic-sampling step are merged, at most
        `max_groups` groups); the videos come from the object store, no decode."""
        self._maybe_fault("train_step")
        batch = batches[0] if len(batches) == 1 and not max_groups else merge_batches(list(batches), max_groups)
        keys = [g.key for g in batch.groups]
        samples = ray.get([g.video for g in batch.groups])
        out = self.core.train_step(batch, dict(zip(keys, samples)))
        return {**out, "batch_rows": float(batch.rows), "batch_tokens": float(batch.total_tokens)}

    def init_weight_group(self, host, port, world_size, backend, timeout_s) -> bool:
        self.pg, self._store = make_group(host, port, 0, world_size, backend, timeout_s)
        return True

    def prepare_sync(self, version: int, bucket_mb: int, trainable_only: bool):
        return self.core.prepare_sync(version, bucket_mb, trainable_only)

    def send_sync(self) -> float:
        corrupt = bool(self._armed and self._armed.pop("send_sync", None) == "corrupt")
        return self.core.send_sync(self.pg, corrupt=corrupt)

    def named_weights(self, names: list[str]) -> dict:
        return self.core.full_weights(names)

    def save_shard(self, ckpt_dir: str) -> str:
        return self.core.save_shard(ckpt_dir)

    def load_shard(self, ckpt_dir: str) -> int:
        return self.core.load_shard(ckpt_dir)

    def export_hf(self, out_dir: str):
        return self.core.export_hf(out_dir)
