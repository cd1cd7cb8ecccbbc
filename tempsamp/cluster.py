"""The Ray cluster as the rest of the system sees it: joining or starting it (`init_ray`), reserving
a plan's placement groups, and the one classifier of what a remote call's outcome means for repair
(`classify` / `wait_classified`). Training, evaluation and re-framing all go through here.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

from .placement.plan import Plan, PlacementError

# ok: a value; dead: the actor (or its engine) can no longer serve -> replace it; refused: the engine
# rejected the request (bad input, retrying cannot help); error: the call raised otherwise (retry);
# stuck: it did not finish in time -> replace
Outcome = Literal["ok", "dead", "refused", "error", "stuck"]


def init_ray(num_cpus: int | None = None, num_gpus: int | None = None, spill_dir: str = "",
             metrics_port: int = 0) -> None:
    """Join the cluster in RAY_ADDRESS (a Ray job sets it), or start a local Ray whose every server
    (GCS, raylet, metrics export, dashboard when on) binds to 127.0.0.1 only."""
    local = not os.environ.get("RAY_ADDRESS")
    if local:
        # Ray resolves "127.0.0.1" to the machine's reachable IP unless cluster mode is off; the flag is read
        # at import time, so set it before importing ray (and on the constants if ray is already imported).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # nothing is reachable from outside this host
        if "ray" in sys.modules and os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0":
            import ray._private.ray_constants as rc

            rc.ENABLE_RAY_CLUSTER = False
    import ray

    if ray.is_initialized():
        return
    if not local:
        # a Ray job brings its runtime env (working dir on every worker's path, jobs/runtime_env.yaml's
        # env vars); Ray refuses to merge a second one, so none is passed here
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
        return
    pkg_root = str(Path(__file__).resolve().parents[1])
    runtime_env = {"env_vars": {"PYTHONPATH": pkg_root + os.pathsep + os.environ.get("PYTHONPATH", ""),
                                "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
                                "TRANSFORMERS_VERBOSITY": "error"}}
    ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
             _node_ip_address="127.0.0.1", runtime_env=runtime_env, log_to_driver=True,
             object_spilling_directory=spill_dir or os.path.join(tempfile.gettempdir(), "tempsamp-spill"),
             _metrics_export_port=metrics_port or None)


def cluster_resources() -> dict:
    import ray

    return ray.cluster_resources()


def reserve_placement_groups(plan: Plan, timeout_s: float = 120.0, name_prefix: str = "tempsamp") -> dict:
    """Reserve one placement group per role of `plan`; fail with the role name if Ray cannot place it.
    The groups are requested together and then awaited, so Ray schedules them at once (waiting on each
    before asking for the next cost ~1 s per role on a local cluster)."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    pgs = {name: placement_group([b.as_ray() for b in rp.bundles], strategy=rp.strategy, name=f"{name_prefix}-{name}")
           for name, rp in plan.roles.items()}
    deadline = time.time() + timeout_s
    for name, pg in pgs.items():
        ready, _ = ray.wait([pg.ready()], timeout=max(0.0, deadline - time.time()))
        if not ready:
            for other in pgs.values():
                remove_placement_group(other)
            rp = plan.roles[name]
            raise PlacementError(f"role `{name}`: Ray could not place {len(rp.bundles)} bundles "
                                 f"{rp.bundles[0].as_ray()} ({rp.strategy}) within {timeout_s:.0f}s; "
                                 f"cluster resources: {ray.cluster_resources()}")
    return pgs


def release_placement_groups(pgs: dict) -> None:
    from ray.util.placement_group import remove_placement_group

    for pg in pgs.values():
        try:
            remove_placement_group(pg)
        except Exception:  # already removed (cluster shutting down)
            pass


def kill_quietly(actors: list) -> None:
    import ray

    for a in actors:
        try:
            ray.kill(a, no_restart=True)
        except Exception:  # already dead
            pass


def error_text(exc) -> str:
    """`Type: last line` of the root cause of a Ray error (what logs and StepFailed messages show)."""
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"[:500]


def classify(exc: BaseException) -> Outcome | None:
    """What a failed call means for repair (see `Outcome`); None for an exception that is not a
    remote call's failure (a bug on the caller's side: it propagates)."""
    from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

    from .rollout.health import EngineDead, EngineRequestError

    if isinstance(exc, GetTimeoutError):
        return "stuck"
    if isinstance(exc, (RayActorError, EngineDead)):
        return "dead"
    if isinstance(exc, RayTaskError):
        cause = getattr(exc, "cause", None)
        if isinstance(cause, (RayActorError, EngineDead)):  # a dependency's actor or the engine died
            return "dead"
        return "refused" if isinstance(cause, EngineRequestError) else "error"
    return None


def wait_classified(refs: list, timeout: float) -> list[tuple[Outcome, object]]:
    """Wait for all refs (at most `timeout` s) and classify each: ("ok", value), or (outcome, exc)
    for a failed call, ("stuck", None) for one that did not finish in time."""
    import ray

    ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout) if refs else ([], [])
    ready = set(ready)
    out: list[tuple[Outcome, object]] = []
    for r in refs:
        if r not in ready:
            out.append(("stuck", None))
            continue
        try:
            out.append(("ok", ray.get(r)))
        except Exception as e:
            kind = classify(e)
            if kind is None:
                raise
            out.append((kind, None if kind == "stuck" else e))
    return out
