"""Actor pools: the actors of each role of a placement plan, started in the role's placement group
with role-named actors, replaceable in place. Training, evaluation and re-framing all get their
actors here (`training_actors`, `serving_actors`); what the actors do with each other (the step
chain, the weight broadcast) lives in `step.py` and `weight_sync.py`."""

from __future__ import annotations

import logging
from typing import Callable

import ray
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from ..cluster import kill_quietly, release_placement_groups, reserve_placement_groups
from ..placement.plan import Plan

log = logging.getLogger(__name__)

# (ray actor options, actor name) -> actor handle
Factory = Callable[[dict, str], object]


def engine_factory(backend: str, model_dir: str, engine_kwargs: dict, runtime_env: dict | None = None) -> Factory:
    from .rollout import RolloutActor

    return lambda opts, name: RolloutActor.options(runtime_env=runtime_env, **opts).remote(
        backend, model_dir, name, engine_kwargs)


def decode_factory(params, cache_dir: str = "", mode: str = "realtime_only", rebuild: bool = False) -> Factory:
    from .decode import DecodeActor

    return lambda opts, name: DecodeActor.options(**opts).remote(params, cache_dir, mode, rebuild)


def training_actors(cfg, model_dir: str, params) -> dict[str, Factory]:
    """The four roles of a training run, each built from the config by its core's adapter."""
    from ..algo.batch import reward_options
    from ..config import effective_recipe
    from ..data.decoder import decoder_args
    from ..models.loading import detect_family
    from ..rollout.engine_args import engine_args
    from .learner import LearnerActor
    from .reward import RewardActor

    kw, env = engine_args(cfg, cfg.rollout.backend, detect_family(model_dir))
    opts = reward_options(cfg)
    filt = effective_recipe(cfg).filter_groups
    return {
        "decode": decode_factory(**decoder_args(cfg, params)),
        "rollout": engine_factory(cfg.rollout.backend, model_dir, kw, env),
        "reward": lambda o, name: RewardActor.options(**o).remote(model_dir, opts, filt),
        "learner": lambda o, name: LearnerActor.options(**o).remote(),
    }


class Pools:
    """One pool per role of `plan` that has a factory. Actors of every role but the learner can be
    replaced in place one by one (`replace`): same bundle of the role's placement group, a new
    generation-suffixed name. Learner ranks form one FSDP group, which cannot admit a new member: they
    are restarted all together (`restart_all`, see `recovery.py`). `restarts` counts replaced actors."""

    def __init__(self, plan: Plan, factories: dict[str, Factory], run_name: str, start_timeout_s: float = 900.0):
        self.plan, self.run, self.start_timeout_s = plan, run_name, start_timeout_s
        self._factories = factories
        self.pgs = reserve_placement_groups(plan, name_prefix=run_name)
        self.generation: dict[tuple[str, int], int] = {}
        self.restarts = {role: 0 for role in factories}
        try:
            self._pools = {role: [self._make(role, i) for i in range(plan.roles[role].actors)] for role in factories}
        except BaseException:
            release_placement_groups(self.pgs)
            raise

    @property
    def decode(self) -> list:
        return self._pools.get("decode", [])

    @property
    def engines(self) -> list:
        return self._pools.get("rollout", [])

    @property
    def reward(self) -> list:
        return self._pools.get("reward", [])

    @property
    def learners(self) -> list:
        return self._pools.get("learner", [])

    def actors(self, role: str) -> list:
        return self._pools[role]

    def name(self, role: str, i: int) -> str:
        g = self.generation.get((role, i), 0)
        return f"{self.run}-{role}-{i}" + (f".r{g}" if g else "")

    def _make(self, role: str, i: int):
        rp = self.plan.roles[role]
        opts = dict(num_cpus=rp.cpus_per_actor, num_gpus=rp.gpus_per_actor, name=self.name(role, i), max_restarts=0,
                    scheduling_strategy=PlacementGroupSchedulingStrategy(self.pgs[role], placement_group_bundle_index=i))
        return self._factories[role](opts, self.name(role, i))

    def replace(self, role: str, i: int, reason: str) -> None:
        """Kill actor i of `role` (dead, stuck or failing) and start a fresh one in the same bundle."""
        if role == "learner":
            raise ValueError("learner ranks are not replaceable in-job (one FSDP group)")
        old_name = self.name(role, i)
        pool = self._pools[role]
        kill_quietly([pool[i]])
        self.generation[(role, i)] = self.generation.get((role, i), 0) + 1
        self.restarts[role] += 1
        log.warning("replacing %s (%s) with %s: %s", old_name, role, self.name(role, i), reason)
        pool[i] = self._make(role, i)
        ray.get(pool[i].ping.remote(), timeout=self.start_timeout_s)

    def restart_all(self, role: str, reason: str) -> None:
        """Kill every actor of `role` and start fresh ones in the same bundles, for a group that cannot
        admit a new member (the learner's FSDP group); returns once each answers ping."""
        pool = self._pools[role]
        old = [self.name(role, i) for i in range(len(pool))]
        kill_quietly(pool)
        for i in range(len(pool)):
            self.generation[(role, i)] = self.generation.get((role, i), 0) + 1
        self.restarts[role] += len(pool)
        log.warning("restarting %s (%s) as %s: %s", ", ".join(old), role,
                    ", ".join(self.name(role, i) for i in range(len(pool))), reason)
        pool[:] = [self._make(role, i) for i in range(len(pool))]
        ray.get([a.ping.remote() for a in pool], timeout=self.start_timeout_s)

    def shutdown(self) -> None:
        kill_quietly([a for pool in self._pools.values() for a in pool])
        release_placement_groups(self.pgs)
