"""Create the four actor pools inside their placement groups, with role-named actors."""

from __future__ import annotations

import logging
import os

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from ..algo.batch import reward_options
from ..data.video import VideoParams
from ..models.loading import detect_family
from ..placement.plan import Plan, create_placement_groups
from ..rollout.health import EngineDead
from ..sync.weights import free_port
from .decode import DecodeActor
from .learner import LearnerActor
from .reward import RewardActor
from .rollout import RolloutActor

log = logging.getLogger(__name__)


def engine_kwargs(cfg, backend: str, family: str) -> tuple[dict, dict]:
    """Constructor kwargs and runtime_env of a rollout/eval engine actor for `backend` and model `family`."""
    from ..rollout.vllm_engine import scheduling_settings

    r = cfg.rollout
    if backend == "vllm":
        kw = dict(max_model_len=r.max_model_len, dtype=cfg.model.dtype, gpu_memory_utilization=r.gpu_memory_utilization,
                  enforce_eager=r.enforce_eager or not cfg.placement.use_gpus,
                  tensor_parallel_size=r.tensor_parallel_size, seed=r.seed, cpu_kvcache_gib=r.cpu_kvcache_gib,
                  scheduling=scheduling_settings(family, cfg.placement.use_gpus, r.max_model_len))
    else:
        kw = dict(dtype=cfg.model.dtype, attn_implementation=cfg.model.attn_implementation,
                  device="cuda" if cfg.placement.use_gpus else "cpu")
    return kw, {"env_vars": {"VLLM_CPU_KVCACHE_SPACE": str(r.cpu_kvcache_gib)}}


def _opts(plan: Plan, pgs: dict, role: str, i: int, name: str) -> dict:
    rp = plan.roles[role]
    return dict(num_cpus=rp.cpus_per_actor, num_gpus=rp.gpus_per_actor, name=name, max_restarts=0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(pgs[role], placement_group_bundle_index=i))


class Pools:
    """The four pools plus the weight group. Decode, rollout and reward actors can be replaced in place
    (`replace`): same bundle of the role's placement group, a new generation-suffixed name; a new
    rollout engine is brought to the current weights by the caller (`sync_weights` after
    `rebuild_weight_group`) before it serves. Learner ranks are not replaceable in-job (one FSDP
    group): a dead rank fails the run and `checkpoint.resume: auto` continues it."""

    def __init__(self, cfg, model_dir: str, plan: Plan, params: VideoParams, total_steps: int):
        self.cfg, self.plan, self.model_dir = cfg, plan, model_dir
        self.run = run = cfg.trainer.run_name
        self.pgs = create_placement_groups(plan, name_prefix=run)
        d, r = cfg.data, cfg.rollout
        mode = d.video_source_mode if d.use_preprocessed else "realtime_only"
        kw, env = engine_kwargs(cfg, r.backend, detect_family(model_dir))
        reward_opts = reward_options(cfg)
        self._factories = {
            "decode": lambda i, name: DecodeActor.options(**_opts(plan, self.pgs, "decode", i, name)).remote(
                params, d.preprocessed_video_dir, mode, d.rebuild_cache),
            "rollout": lambda i, name: RolloutActor.options(runtime_env=env, **_opts(plan, self.pgs, "rollout", i, name)
                                                            ).remote(r.backend, model_dir, name, kw),
            "reward": lambda i, name: RewardActor.options(**_opts(plan, self.pgs, "reward", i, name)).remote(
                model_dir, reward_opts),
        }
        self.generation: dict[tuple[str, int], int] = {}
        self.restarts = {"decode": 0, "rollout": 0, "reward": 0}
        self.resyncs = 0
        self.decode = [self._make("decode", i) for i in range(plan.roles["decode"].actors)]
        self.engines = [self._make("rollout", i) for i in range(plan.roles["rollout"].actors)]
        self.reward = [self._make("reward", i) for i in range(plan.roles["reward"].actors)]
        nl = plan.roles["learner"].actors
        self.learners = [LearnerActor.options(**_opts(plan, self.pgs, "learner", i, f"{run}-learner-{i}")).remote()
                         for i in range(nl)]
        self.host = ray.get(self.learners[0].node_address.remote())
        port = ray.get(self.learners[0].free_port.remote())
        ray.get([l.setup.remote(cfg, model_dir, i, nl, f"{self.host}:{port}", total_steps)
                 for i, l in enumerate(self.learners)])
        self.rebuild_weight_group()

    def name(self, role: str, i: int) -> str:
        g = self.generation.get((role, i), 0)
        return f"{self.run}-{role}-{i}" + (f".r{g}" if g else "")

    def _make(self, role: str, i: int):
        return self._factories[role](i, self.name(role, i))

    def actors(self, role: str) -> list:
        return {"decode": self.decode, "rollout": self.engines, "reward": self.reward, "learner": self.learners}[role]

    def replace(self, role: str, i: int, reason: str) -> None:
        """Kill actor i of `role` (dead, stuck or failing) and start a fresh one in the same bundle."""
        old_name = self.name(role, i)
        pool = self.actors(role)
        try:
            ray.kill(pool[i], no_restart=True)
        except Exception:  # already dead
            pass
        self.generation[(role, i)] = self.generation.get((role, i), 0) + 1
        self.restarts[role] += 1
        log.warning("replacing %s (%s) with %s: %s", old_name, role, self.name(role, i), reason)
        pool[i] = self._make(role, i)
        ray.get(pool[i].ping.remote(), timeout=self.cfg.trainer.actor_start_timeout_s)

    def rebuild_weight_group(self) -> None:
        """(Re)create the broadcast group learner rank 0 + every engine, on a fresh port. Used at start
        and after an engine was replaced (a process group cannot admit a new member)."""
        cfg = self.cfg
        tp = cfg.rollout.tensor_parallel_size
        world = 1 + len(self.engines) * tp
        backend = cfg.sync.backend
        if backend == "auto":
            backend = "nccl" if cfg.placement.use_gpus and os.environ.get("TEMPSAMP_FORCE_GLOO") != "1" else "gloo"
        port = ray.get(self.learners[0].free_port.remote())
        refs = [self.learners[0].init_weight_group.remote(self.host, port, world, backend, cfg.sync.timeout_s)]
        refs += [e.init_weight_group.remote(self.host, port, 1 + i * tp, world, backend, cfg.sync.timeout_s)
                 for i, e in enumerate(self.engines)]
        ray.get(refs, timeout=cfg.sync.timeout_s)
        self.sync_backend = backend

    def _sync_once(self, version: int) -> dict:
        cfg = self.cfg
        t = cfg.sync.timeout_s
        plans = ray.get([l.prepare_sync.remote(version, cfg.sync.bucket_mb, cfg.learner.freeze_vision_tower)
                         for l in self.learners], timeout=t)
        plan = plans[0]
        recv = [e.receive_weights.remote(plan) for e in self.engines]
        send = self.learners[0].send_sync.remote()
        ready, _ = ray.wait(recv + [send], num_returns=len(recv) + 1, timeout=t)
        bad: list[tuple[int, str]] = []
        for i, ref in enumerate(recv):
            if ref not in ready:
                bad.append((i, "stuck"))
                continue
            try:
                got = ray.get(ref)
                if got["version"] != version:
                    bad.append((i, f"ended at version {got['version']}"))
            except RayActorError as e:
                bad.append((i, f"died ({type(e).__name__})"))
            except RayTaskError as e:
                cause = e.cause if getattr(e, "cause", None) else e
                text = str(cause).strip().splitlines()[0]
                # an engine that can no longer serve is as dead as its actor: replace it
                bad.append((i, f"died ({text})" if isinstance(cause, EngineDead) else f"failed: {text}"))
        if bad:
            raise _SyncFailed(version, bad, send)
        return {"sync/bytes": float(plan.nbytes), "sync/buckets": float(len(plan.buckets)),
                "sync/send_s": float(ray.get(send, timeout=t))}

    def sync_weights(self, version: int) -> dict:
        """Broadcast version `version` to every engine; checksummed per bucket. An engine that ends with
        another version or a bad checksum is re-synced; a dead or stuck one is replaced first. Fails
        loudly (role, actor, reason) after `sync.max_retries` re-syncs."""
        attempts = self.cfg.sync.max_retries + 1
        for attempt in range(attempts):
            try:
                out = self._sync_once(version)
                out["sync/resyncs"] = float(attempt)
                return out
            except _SyncFailed as f:
                what = "; ".join(f"{self.name('rollout', i)}: {why}" for i, why in f.bad)
                if attempt + 1 == attempts:
                    raise RuntimeError(f"weight sync v{version} failed {attempts} times (role rollout): {what}") from None
                log.warning("weight sync v%d attempt %d: %s — re-syncing", version, attempt + 1, what)
                self.resyncs += 1
                try:  # the sender finishes or hits the group timeout once receivers are gone
                    ray.get(f.send, timeout=self.cfg.sync.timeout_s)
                except (RayTaskError, RayActorError, GetTimeoutError) as e:
                    log.warning("weight sync v%d: sender: %s", version, str(e).splitlines()[0])
                dead = [i for i, why in f.bad if why == "stuck" or why.startswith("died")]
                for i in dead:
                    self.replace("rollout", i, f"weight sync v{version}: {dict(f.bad)[i]}")
                if dead:
                    self.rebuild_weight_group()
        raise AssertionError("unreachable")

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


class _SyncFailed(Exception):
    def __init__(self, version: int, bad: list[tuple[int, str]], send):
        super().__init__(f"sync v{version}: {bad}")
        self.version, self.bad, self.send = version, bad, send
