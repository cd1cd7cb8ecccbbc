"""Placement plan: one placement group per role with explicit bundles, validated before any actor.

Roles: learner (FSDP ranks, 1 GPU each, STRICT_PACK when it fits one node), rollout (engines x TP
GPUs, one bundle per engine), decode and reward (CPU bundles). `colocate` puts the rollout engines
on the learner's GPUs (time-shared). A CPU-only plan (placement.use_gpus=false) is the demo/test shape.
"""

from __future__ import annotations

import msgspec


class PlacementError(RuntimeError):
    """The plan does not fit the cluster; names the role and the shortfall."""


class Bundle(msgspec.Struct, frozen=True):
    CPU: float
    GPU: float = 0.0

    def as_ray(self) -> dict:
        d = {"CPU": self.CPU}
        if self.GPU:
            d["GPU"] = self.GPU
        return d


class RolePlan(msgspec.Struct):
    role: str
    actors: int
    bundles: list[Bundle]
    strategy: str  # STRICT_PACK | PACK | SPREAD
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    shares_with: str = ""  # colocated role whose GPUs this role uses
    sized_by: str = ""  # the config keys that size this role (named when it does not fit)

    @property
    def gpus(self) -> float:
        return sum(b.GPU for b in self.bundles)

    @property
    def cpus(self) -> float:
        return sum(b.CPU for b in self.bundles)


class Plan(msgspec.Struct):
    roles: dict[str, RolePlan]
    cluster_gpus: float
    cluster_cpus: float
    colocate: bool = False


def resolve_use_gpus(cfg, cluster: dict | None, notice=print):
    """`cfg` with placement.use_gpus decided: "auto" becomes True when `cluster` has GPUs (or when no
    cluster is known: the planned shape), else False with one notice line; true/false are kept."""
    p = cfg.placement
    if p.use_gpus != "auto":
        return cfg
    gpus = None if cluster is None else float(cluster.get("GPU", 0.0))
    use = gpus is None or gpus > 0
    if not use:
        notice("placement.use_gpus=auto: the Ray cluster has no GPUs, running on CPU "
               "(set placement.use_gpus=true to wait for GPU nodes instead)")
    return msgspec.structs.replace(cfg, placement=msgspec.structs.replace(p, use_gpus=use))


def make_plan(cfg, cluster: dict | None = None) -> Plan:
    """Build and validate the plan. `cluster` = {"GPU": n, "CPU": n} (default: from the config)."""
    cfg = resolve_use_gpus(cfg, cluster)
    p, r = cfg.placement, cfg.rollout
    if cluster is None:
        cluster = {"GPU": p.num_nodes * p.gpus_per_node if p.use_gpus else 0.0,
                   "CPU": p.num_nodes * p.cpus_per_node}
    gpus_avail, cpus_avail = float(cluster.get("GPU", 0.0)), float(cluster.get("CPU", 0.0))
    roles: dict[str, RolePlan] = {}
    g = 1.0 if p.use_gpus else 0.0
    n_learn = cfg.learner.num_ranks
    if p.use_gpus and p.learner_gpus and p.learner_gpus != n_learn:
        raise PlacementError(f"placement.learner_gpus={p.learner_gpus} but learner.num_ranks={n_learn}: "
                             "one learner rank per GPU")
    learner_strategy = "STRICT_PACK" if (not p.use_gpus or n_learn <= p.gpus_per_node) else "PACK"
    roles["learner"] = RolePlan("learner", n_learn, [Bundle(CPU=p.cpus_per_gpu_actor, GPU=g)] * n_learn,
                                learner_strategy, gpus_per_actor=g, cpus_per_actor=p.cpus_per_gpu_actor,
                                sized_by="learner.num_ranks")
    tp = r.tensor_parallel_size
    engines_by = "rollout.num_engines x rollout.tensor_parallel_size"
    if p.use_gpus and tp > p.gpus_per_node:
        raise PlacementError(f"role `rollout`: tensor_parallel_size={tp} exceeds gpus_per_node={p.gpus_per_node}")
    if p.colocate:
        if not p.use_gpus:
            raise PlacementError("placement.colocate needs GPUs")
        if r.num_engines * tp > n_learn:
            raise PlacementError(f"role `rollout` (colocated): {r.num_engines} engines x TP{tp} need "
                                 f"{r.num_engines * tp} GPUs but the learner has {n_learn}")
        # rollout engines take half of each learner GPU (time-shared); their bundles share the GPUs.
        roles["rollout"] = RolePlan("rollout", r.num_engines, [Bundle(CPU=p.cpus_per_gpu_actor, GPU=0.5 * tp)]
                                    * r.num_engines, "PACK", gpus_per_actor=0.5 * tp,
                                    cpus_per_actor=p.cpus_per_gpu_actor, shares_with="learner", sized_by=engines_by)
        roles["learner"] = RolePlan("learner", n_learn, [Bundle(CPU=p.cpus_per_gpu_actor, GPU=0.5)] * n_learn,
                                    learner_strategy, gpus_per_actor=0.5, cpus_per_actor=p.cpus_per_gpu_actor,
                                    shares_with="rollout", sized_by="learner.num_ranks")
    else:
        roles["rollout"] = RolePlan("rollout", r.num_engines, [Bundle(CPU=p.cpus_per_gpu_actor, GPU=g * tp)]
                                    * r.num_engines, "PACK", gpus_per_actor=g * tp,
                                    cpus_per_actor=p.cpus_per_gpu_actor, sized_by=engines_by)
    roles["decode"] = RolePlan("decode", p.decode_actors, [Bundle(CPU=p.cpus_per_decode_actor)] * p.decode_actors,
                               "SPREAD", cpus_per_actor=p.cpus_per_decode_actor,
                               sized_by="placement.decode_actors x placement.cpus_per_decode_actor")
    roles["reward"] = RolePlan("reward", p.reward_actors, [Bundle(CPU=p.cpus_per_reward_actor)] * p.reward_actors,
                               "PACK", cpus_per_actor=p.cpus_per_reward_actor,
                               sized_by="placement.reward_actors x placement.cpus_per_reward_actor")
    plan = Plan(roles=roles, cluster_gpus=gpus_avail, cluster_cpus=cpus_avail, colocate=p.colocate)
    check_fit(plan)
    return plan


def make_serving_plan(engines: int, gpus_per_engine: float, cpus_per_actor: float, decoders: int,
                      cluster: dict, engines_by: str, decoders_by: str) -> Plan:
    """Plan of a job that only serves a model (evaluation, re-framing): `engines` engine actors and
    `decoders` decode actors, checked against `cluster` by the same fit check as training."""
    roles = {
        "rollout": RolePlan("rollout", engines, [Bundle(CPU=cpus_per_actor, GPU=gpus_per_engine)] * engines, "PACK",
                            gpus_per_actor=gpus_per_engine, cpus_per_actor=cpus_per_actor, sized_by=engines_by),
        "decode": RolePlan("decode", decoders, [Bundle(CPU=cpus_per_actor)] * decoders, "SPREAD",
                           cpus_per_actor=cpus_per_actor, sized_by=decoders_by),
    }
    plan = Plan(roles=roles, cluster_gpus=float(cluster.get("GPU", 0.0)), cluster_cpus=float(cluster.get("CPU", 0.0)))
    check_fit(plan)
    return plan


def check_fit(plan: Plan) -> None:
    """Fail before any actor starts (a pending actor would wait forever) when the roles, in order,
    do not fit the cluster; the message names the role, the shortfall and the keys that size it."""
    gpus_left, cpus_left = plan.cluster_gpus, plan.cluster_cpus
    for name, rp in plan.roles.items():
        knobs = f" (sized by {rp.sized_by})" if rp.sized_by else ""
        if rp.actors < 1:
            raise PlacementError(f"role `{name}` needs at least one actor (got {rp.actors}){knobs}")
        need_g = rp.gpus
        if need_g > gpus_left + 1e-9:
            others = ", ".join(f"{k} {v.gpus:g}" for k, v in plan.roles.items() if k != name and v.gpus)
            hint = "; on a CPU-only cluster set placement.use_gpus=false" if not plan.cluster_gpus else ""
            raise PlacementError(f"role `{name}` needs {need_g:g} GPUs but only {gpus_left:g} are left "
                                 f"(cluster {plan.cluster_gpus:g} GPUs; {others or 'no other GPU roles'}); "
                                 f"short by {need_g - gpus_left:g}{knobs}{hint}")
        if rp.cpus > cpus_left + 1e-9:
            raise PlacementError(f"role `{name}` needs {rp.cpus:g} CPUs but only {cpus_left:g} are left "
                                 f"(cluster {plan.cluster_cpus:g} CPUs); short by {rp.cpus - cpus_left:g}{knobs}")
        gpus_left -= need_g
        cpus_left -= rp.cpus


def format_plan(plan: Plan) -> str:
    rows = [("role", "actors", "GPU/actor", "CPU/actor", "GPUs", "CPUs", "strategy", "notes")]
    for name, rp in plan.roles.items():
        rows.append((name, str(rp.actors), f"{rp.gpus_per_actor:g}", f"{rp.cpus_per_actor:g}", f"{rp.gpus:g}",
                     f"{rp.cpus:g}", rp.strategy, f"shares GPUs with {rp.shares_with}" if rp.shares_with else ""))
    tg = sum(rp.gpus for rp in plan.roles.values())
    tc = sum(rp.cpus for rp in plan.roles.values())
    rows.append(("total", "", "", "", f"{tg:g}/{plan.cluster_gpus:g}", f"{tc:g}/{plan.cluster_cpus:g}", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
