"""Create the four actor pools inside their placement groups, with role-named actors."""

from __future__ import annotations

import logging
import os

import msgspec
import ray
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from ..data.video import VideoParams
from ..placement.plan import Plan, create_placement_groups
from ..sync.weights import free_port
from .decode import DecodeActor
from .learner import LearnerActor
from .reward import RewardActor
from .rollout import RolloutActor

log = logging.getLogger(__name__)


def engine_kwargs(cfg, backend: str) -> tuple[dict, dict]:
    """Constructor kwargs and runtime_env of a rollout/eval engine actor for `backend`."""
    r = cfg.rollout
    if backend == "vllm":
        kw = dict(max_model_len=r.max_model_len, dtype=cfg.model.dtype, gpu_memory_utilization=r.gpu_memory_utilization,
                  enforce_eager=r.enforce_eager or not cfg.placement.use_gpus,
                  tensor_parallel_size=r.tensor_parallel_size, seed=r.seed, cpu_kvcache_gib=r.cpu_kvcache_gib)
    else:
        kw = dict(dtype=cfg.model.dtype, attn_implementation=cfg.model.attn_implementation,
                  device="cuda" if cfg.placement.use_gpus else "cpu")
    return kw, {"env_vars": {"VLLM_CPU_KVCACHE_SPACE": str(r.cpu_kvcache_gib)}}


def _opts(plan: Plan, pgs: dict, role: str, i: int, run: str) -> dict:
    rp = plan.roles[role]
    return dict(num_cpus=rp.cpus_per_actor, num_gpus=rp.gpus_per_actor, name=f"{run}-{role}-{i}",
                scheduling_strategy=PlacementGroupSchedulingStrategy(pgs[role], placement_group_bundle_index=i))


class Pools:
    def __init__(self, cfg, model_dir: str, plan: Plan, params: VideoParams, total_steps: int):
        self.cfg, self.plan, self.model_dir = cfg, plan, model_dir
        run = cfg.trainer.run_name
        self.pgs = create_placement_groups(plan, name_prefix=run)
        d = cfg.data
        mode = d.video_source_mode if d.use_preprocessed else "realtime_only"
        self.decode = [DecodeActor.options(**_opts(plan, self.pgs, "decode", i, run)).remote(
            params, d.preprocessed_video_dir, mode, d.rebuild_cache) for i in range(plan.roles["decode"].actors)]
        r = cfg.rollout
        kw, env = engine_kwargs(cfg, r.backend)
        self.engines = [RolloutActor.options(runtime_env=env, **_opts(plan, self.pgs, "rollout", i, run)).remote(
            r.backend, model_dir, f"{run}-rollout-{i}", kw) for i in range(plan.roles["rollout"].actors)]
        rc = msgspec.to_builtins(cfg.reward)
        ac = msgspec.to_builtins(cfg.algorithm)
        self.reward = [RewardActor.options(**_opts(plan, self.pgs, "reward", i, run)).remote(
            model_dir, r.n, cfg.algorithm.gt_injection_enabled(), rc, ac) for i in range(plan.roles["reward"].actors)]
        nl = plan.roles["learner"].actors
        self.learners = [LearnerActor.options(**_opts(plan, self.pgs, "learner", i, run)).remote() for i in range(nl)]
        host = ray.get(self.learners[0].node_address.remote())
        port = ray.get(self.learners[0].free_port.remote())
        ray.get([l.setup.remote(cfg, model_dir, i, nl, f"{host}:{port}", total_steps)
                 for i, l in enumerate(self.learners)])
        self._init_weight_group(host)

    def _init_weight_group(self, host: str) -> None:
        cfg = self.cfg
        tp = cfg.rollout.tensor_parallel_size
        world = 1 + len(self.engines) * tp
        backend = cfg.sync.backend
        if backend == "auto":
            backend = "nccl" if cfg.placement.use_gpus and os.environ.get("TEMPSAMP_FORCE_GLOO") != "1" else "gloo"
        port = ray.get(self.learners[0].free_port.remote())
        refs = [self.learners[0].init_weight_group.remote(host, port, world, backend, cfg.sync.timeout_s)]
        refs += [e.init_weight_group.remote(host, port, 1 + i * tp, world, backend, cfg.sync.timeout_s)
                 for i, e in enumerate(self.engines)]
        ray.get(refs, timeout=cfg.sync.timeout_s)
        self.sync_backend = backend

    def sync_weights(self, version: int) -> dict:
        cfg = self.cfg
        plans = ray.get([l.prepare_sync.remote(version, cfg.sync.bucket_mb, cfg.learner.freeze_vision_tower)
                         for l in self.learners], timeout=cfg.sync.timeout_s)
        plan = plans[0]
        recv = [e.receive_weights.remote(plan) for e in self.engines]
        send = self.learners[0].send_sync.remote()
        res = ray.get(recv + [send], timeout=cfg.sync.timeout_s)
        versions = {r["version"] for r in res[:-1]}
        if versions != {version}:
            raise RuntimeError(f"weight sync v{version}: engines report versions {versions}")
        return {"sync/bytes": float(plan.nbytes), "sync/buckets": float(len(plan.buckets)),
                "sync/send_s": float(res[-1])}

    def shutdown(self) -> None:
        from ray.util.placement_group import remove_placement_group

        for a in self.decode + self.engines + self.reward + self.learners:
            try:
                ray.kill(a)
            except Exception:  # already gone
                pass
        for pg in self.pgs.values():
            try:
                remove_placement_group(pg)
            except Exception:
                pass
