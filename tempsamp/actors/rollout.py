"""RolloutActor: one engine (vLLM or HF; core: rollout/engine_args.make_engine) generating n responses
per prompt; weight-sync receiver."""

from __future__ import annotations

import os
import time

import ray

from ..rollout.base import PromptRequest, RolloutGroup, SamplingSpec
from ..rollout.engine_args import make_engine
from .faults import FaultHooks


@ray.remote
class RolloutActor(FaultHooks):
    def __init__(self, backend: str, model_dir: str, name: str, engine_kwargs: dict):
        self.name = name
        self.core = make_engine(backend, model_dir, name, engine_kwargs)
        self.generated = 0
        self.seconds = 0.0

    def _engine_pids(self) -> list[int]:
        return self.core.engine_pids() if hasattr(self.core, "engine_pids") else []

    def ping(self) -> dict:
        return {"name": self.name, "pid": os.getpid(), "version": self.core.version,
                "alive": self.core.alive() if hasattr(self.core, "alive") else True,
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "")}

    def generate(self, requests: list[PromptRequest], spec: SamplingSpec, *videos) -> list[RolloutGroup]:
        """`videos` are passed as top-level ObjectRefs, so Ray resolves them from the object store."""
        self._maybe_fault("generate")
        t = time.time()
        out = self.core.generate(requests, list(videos), spec)
        self.seconds += time.time() - t
        self.generated += sum(len(g.response_ids) for g in out)
        return out

    def init_weight_group(self, host, port, rank, world_size, backend, timeout_s) -> bool:
        return self.core.init_weight_group(host, port, rank, world_size, backend, timeout_s)

    def receive_weights(self, plan) -> dict:
        self._maybe_fault("receive_weights")
        return self.core.receive_weights(plan)

    def named_weights(self, names: list[str]) -> dict:
        return self.core.named_weights(names)

    def weight_version(self) -> int:
        return self.core.version

    def stats(self) -> dict:
        return {"generated": self.generated, "seconds": self.seconds, "version": self.core.version}
