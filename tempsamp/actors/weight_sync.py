"""The weight-broadcast protocol between the learner and the rollout engines: the group of learner
rank 0 + every engine worker, one versioned, checksummed broadcast per step, and its repair (an
engine that ends at another version or a bad checksum is re-synced; a dead or stuck one is replaced
in its bundle, the group rebuilt, then re-synced)."""

from __future__ import annotations

import logging

import ray

from ..cluster import classify, error_text
from ..errors import LearnerFailed
from ..sync.weights import bucket_mb_for
from .pools import Pools

log = logging.getLogger(__name__)


def sync_backend(cfg) -> str:
    """nccl between GPUs, gloo on CPU (sync.backend=auto), or what sync.backend names."""
    if cfg.sync.backend != "auto":
        return cfg.sync.backend
    return "nccl" if cfg.placement.use_gpus else "gloo"


class _SyncFailed(Exception):
    def __init__(self, version: int, bad: list[tuple[int, str]], send):
        super().__init__(f"sync v{version}: {bad}")
        self.version, self.bad, self.send = version, bad, send


class WeightBroadcast:
    def __init__(self, cfg, pools: Pools, host: str):
        self.cfg, self.pools, self.host = cfg, pools, host
        self.backend = sync_backend(cfg)
        self.bucket_mb = bucket_mb_for(self.backend, cfg.sync.bucket_mb)
        self.version = 0  # what the engines serve: the base model until the first sync
        self.resyncs = 0
        self.rebuild_group()

    def rebuild_group(self) -> None:
        """(Re)create the broadcast group learner rank 0 + every engine, on a fresh port. Used at start
        and after an engine was replaced (a process group cannot admit a new member)."""
        s, p = self.cfg.sync, self.pools
        tp = self.cfg.rollout.tensor_parallel_size
        world = 1 + len(p.engines) * tp
        sender = p.learners[0]
        port = ray.get(sender.free_port.remote())
        refs = [sender.init_weight_group.remote(self.host, port, world, self.backend, s.timeout_s)]
        refs += [e.init_weight_group.remote(self.host, port, 1 + i * tp, world, self.backend, s.timeout_s)
                 for i, e in enumerate(p.engines)]
        ray.get(refs, timeout=s.timeout_s)

    def _sync_once(self, version: int) -> dict:
        s, p = self.cfg.sync, self.pools
        t = s.timeout_s
        try:
            plans = ray.get([l.prepare_sync.remote(version, self.bucket_mb, self.cfg.learner.freeze_vision_tower)
                             for l in p.learners], timeout=t)
        except Exception as e:
            if classify(e) in ("dead", "stuck"):  # the learner side is broken, not an engine
                raise LearnerFailed(f"weight sync v{version}: a learner rank "
                                    f"{'died' if classify(e) == 'dead' else 'did not answer'} "
                                    f"preparing it ({error_text(e)})") from None
            raise
        plan = plans[0]
        recv = [e.receive_weights.remote(plan) for e in p.engines]
        send = p.learners[0].send_sync.remote()
        ready, _ = ray.wait(recv + [send], num_returns=len(recv) + 1, timeout=t)
        bad: list[tuple[int, str]] = []
        for i, ref in enumerate(recv):
            if ref not in ready:
                bad.append((i, "stuck"))
                continue
            try:
                got = ray.get(ref)
            except Exception as e:
                kind = classify(e)
                if kind is None:
                    raise
                cause = getattr(e, "cause", None) or e
                first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
                if kind == "dead" and cause is e:  # the actor itself died
                    first = type(e).__name__
                # an engine that can no longer serve is as dead as its actor: replace it
                bad.append((i, f"died ({first})" if kind == "dead" else f"failed: {first}"))
                continue
            if got["version"] != version:
                bad.append((i, f"ended at version {got['version']}"))
        if bad:
            raise _SyncFailed(version, bad, send)
        return {"sync/bytes": float(plan.nbytes), "sync/buckets": float(len(plan.buckets)),
                "sync/send_s": float(ray.get(send, timeout=t))}

    def sync(self, version: int) -> dict:
        """Broadcast version `version` to every engine. Fails loudly (role, actor, reason) after
        `sync.max_retries` re-syncs."""
        attempts = self.cfg.sync.max_retries + 1
        for attempt in range(attempts):
            try:
                out = self._sync_once(version)
                self.version = version
                out["sync/resyncs"] = float(attempt)
                return out
            except _SyncFailed as f:
                what = "; ".join(f"{self.pools.name('rollout', i)}: {why}" for i, why in f.bad)
                if attempt + 1 == attempts:
                    raise RuntimeError(f"weight sync v{version} failed {attempts} times (role rollout): {what}") from None
                log.warning("weight sync v%d attempt %d: %s — re-syncing", version, attempt + 1, what)
                self.resyncs += 1
                try:  # the sender finishes or hits the group timeout once receivers are gone
                    ray.get(f.send, timeout=self.cfg.sync.timeout_s)
                except Exception as e:
                    if classify(e) is None:
                        raise
                    if classify(e) == "dead":  # the sender itself (learner rank 0) died, not the engines
                        raise LearnerFailed(f"weight sync v{version}: the sender, learner rank 0, died "
                                            f"({error_text(e)})") from None
                    log.warning("weight sync v%d: sender: %s", version, error_text(e))
                dead = [i for i, why in f.bad if why == "stuck" or why.startswith("died")]
                for i in dead:
                    self.pools.replace("rollout", i, f"weight sync v{version}: {dict(f.bad)[i]}")
                if dead:
                    self.rebuild_group()
        raise AssertionError("unreachable")

    def bring_up_to_date(self) -> None:
        """After engines were replaced (they start from the base model): rebuild the group, then
        re-send the version the other engines serve."""
        self.rebuild_group()
        self.sync(self.version)
