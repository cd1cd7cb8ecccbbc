"""One step in flight: decode -> rollout -> reward submitted as one chain of ObjectRefs, then
collected stage by stage with repair.

The fast path submits the whole chain at once (nothing waits). Collection waits stage by stage and
classifies every call (`cluster.wait_classified`): a dead or stuck actor is replaced in its bundle and
only its part of the chain resubmitted (new engines are brought to the current weights first); a bad
video is skipped (counted, logged) or stops the run (data.on_bad_sample); each stage of a step may be
retried `trainer.max_retries` times, then the step fails naming stage, actor and cause.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import ray

from ..cluster import error_text, wait_classified
from ..data.dataset import BadSample, append_bad_samples, bad_samples_path
from ..errors import BadSampleError, StepFailed
from ..rollout.base import PromptRequest, SamplingSpec
from .pools import Pools
from .weight_sync import WeightBroadcast

log = logging.getLogger(__name__)


@dataclass
class RolloutCall:
    """One engine's generate call of a step: the step positions it serves and its result ref."""
    engine: int
    positions: list[int]
    ref: object = None
    gen: int = 0  # generation of the engine actor the call went to (Pools.generation)


@dataclass
class InFlightStep:
    """Everything the driver holds about a launched step (refs only; tensors stay in the object store)."""
    step: int
    epoch: int
    indices: list[int]  # dataset records of the step's prompts
    round: int = 0  # extra prompt draw of dynamic sampling (algorithm.filter_groups)
    decoder: list[int] = field(default_factory=list)  # decode actor of each position
    decoder_gen: list[int] = field(default_factory=list)  # its generation when the call was submitted
    video_refs: list = field(default_factory=list)
    status_refs: list = field(default_factory=list)
    rollouts: list[RolloutCall] = field(default_factory=list)
    groups: list | None = None  # collected rollout results, per call
    reward_actor: int = 0
    reward_gen: int = 0
    batch_ref: object = None
    metrics_ref: object = None
    attempts: dict[str, int] = field(default_factory=dict)

    def keep(self, positions: list[int]) -> None:
        """Drop every other position (skipped bad samples)."""
        self.indices = [self.indices[j] for j in positions]
        self.decoder = [self.decoder[j] for j in positions]
        self.decoder_gen = [self.decoder_gen[j] for j in positions]
        self.video_refs = [self.video_refs[j] for j in positions]
        self.status_refs = [self.status_refs[j] for j in positions]


class StepRunner:
    """Launches and collects steps on the pools; counts repairs (`faults`) and skipped samples (`skip_log`)."""

    def __init__(self, cfg, pools: Pools, weights: WeightBroadcast, videos: list[str], prompts: list[str],
                 answers: list, sources: list[str]):
        self.cfg, self.pools, self.weights = cfg, pools, weights
        self.videos, self.prompts, self.answers, self.sources = videos, prompts, answers, sources
        self.faults = {"retried_calls": 0, "skipped_samples": 0}
        self.skip_log: list[dict] = []
        self.undecodable: set[int] = set()  # records whose video failed to decode (data.max_bad_fraction)

    # ---- submission ---------------------------------------------------------------------------
    def launch(self, step: int, epoch: int, indices: list[int], round: int = 0) -> InFlightStep:
        """Submit the chain for `indices`; `round` > 0: an extra draw of a dynamic-sampling step."""
        p = self.pools
        st = InFlightStep(step=step, epoch=epoch, indices=list(indices), round=round)
        st.decoder = [j % len(p.decode) for j in range(len(indices))]
        st.decoder_gen = [self._gen("decode", d) for d in st.decoder]
        for j, i in enumerate(st.indices):
            v, s_ = p.decode[st.decoder[j]].decode_with_status.remote(self.videos[i])
            st.video_refs.append(v)
            st.status_refs.append(s_)
        self._submit_rollouts(st)
        self._submit_reward(st)
        return st

    def _submit_rollouts(self, st: InFlightStep, only: list[int] | None = None) -> None:
        """(Re)submit generate calls: prompt j of the step goes to engine j % engines."""
        engines = self.pools.engines
        if only is None:
            st.rollouts = [RolloutCall(e, list(range(e, len(st.indices), len(engines))))
                           for e in range(len(engines)) if e < len(st.indices)]
            only = list(range(len(st.rollouts)))
        spec = SamplingSpec.for_step(self.cfg.rollout, st.step, st.round)
        for k in only:
            call = st.rollouts[k]
            call.gen = self._gen("rollout", call.engine)
            reqs = [PromptRequest(key=j, prompt_text=self.prompts[st.indices[j]]) for j in call.positions]
            call.ref = engines[call.engine].generate.remote(reqs, spec, *[st.video_refs[j] for j in call.positions])

    def _submit_reward(self, st: InFlightStep, rollouts: list | None = None) -> None:
        """Score the step's rollouts: the engines' refs on the fast path, or the already collected
        groups when only the reward call is redone. The driver waits on the small metrics object;
        the batch itself goes from the object store to the learners."""
        p = self.pools
        st.reward_actor = st.step % len(p.reward)
        st.reward_gen = self._gen("reward", st.reward_actor)
        st.batch_ref, st.metrics_ref = p.reward[st.reward_actor].score_with_metrics.remote(
            st.step, [self.answers[i] for i in st.indices], [self.prompts[i] for i in st.indices], st.video_refs,
            *(rollouts if rollouts is not None else [c.ref for c in st.rollouts]))

    def _gen(self, role: str, i: int) -> int:
        return self.pools.generation.get((role, i), 0)

    def _stale(self, role: str, i: int, gen: int) -> bool:
        """The call went to an actor that has been replaced since (e.g. by a weight sync while this step,
        launched early at max_staleness 1, was in flight): resubmit to the replacement, do not replace it."""
        if gen == self._gen(role, i):
            return False
        self.faults["retried_calls"] += 1
        log.info("%s: call went to a replaced actor; resubmitting to %s", role, self.pools.name(role, i))
        return True

    # ---- collection with repair ---------------------------------------------------------------
    def collect(self, st: InFlightStep) -> tuple[dict, dict]:
        """Wait for decode -> rollout -> reward of a launched step, repairing as needed; returns the
        batch metrics and the seconds spent waiting on each stage."""
        t0 = time.time()
        changed = self._collect_decode(st)
        t_dec = time.time()
        if changed:
            self._submit_rollouts(st)
        st.groups, roll_changed = self._collect_rollout(st)
        t_roll = time.time()
        if changed or roll_changed:
            self._submit_reward(st)
        metrics = self._collect_reward(st)
        t_rew = time.time()
        return metrics, {"decode": t_dec - t0, "rollout": t_roll - t_dec, "reward": t_rew - t_roll}

    def _retry_budget(self, st: InFlightStep, stage: str, what: str) -> None:
        st.attempts[stage] = st.attempts.get(stage, 0) + 1
        self.faults["retried_calls"] += 1
        if st.attempts[stage] > self.cfg.trainer.max_retries:
            raise StepFailed(f"step {st.step}: {stage} failed after {self.cfg.trainer.max_retries} retries: {what}")

    def _skip(self, st: InFlightStep, j: int, exc) -> None:
        i = st.indices[j]
        why = f"video {self.videos[i]} ({self.sources[i] or 'record'}): {error_text(exc)}"
        if self.cfg.data.on_bad_sample == "stop":
            raise BadSampleError(f"step {st.step}: {why} (data.on_bad_sample=skip to skip and count)")
        log.warning("step %d: skipping sample: %s", st.step, why)
        self.faults["skipped_samples"] += 1
        self.skip_log.append({"step": st.step, "video": self.videos[i], "source": self.sources[i],
                              "reason": error_text(exc)})
        append_bad_samples(bad_samples_path(self.cfg), [BadSample(  # with the rows skipped at load time
            where=self.sources[i], video=self.videos[i], reason="undecodable_video", detail=why, step=st.step)])
        self.undecodable.add(i)
        n, limit = len(self.videos), self.cfg.data.max_bad_fraction
        if len(self.undecodable) > limit * n:  # a broken video store, not a few bad files: stop, do not train on
            raise BadSampleError(
                f"step {st.step}: the videos of {len(self.undecodable)} of {n} records could not be decoded "
                f"({100 * len(self.undecodable) / n:.1f} % > data.max_bad_fraction {100 * limit:g} %); every one "
                f"is listed in {bad_samples_path(self.cfg)}; last: {why}")

    def _collect_decode(self, st: InFlightStep) -> bool:
        """Wait for every video; returns True when the chain had to change."""
        changed = False
        while True:
            status = wait_classified(st.status_refs, self.cfg.trainer.call_timeout_s)
            broken = [j for j, (s_, _) in enumerate(status) if s_ in ("dead", "stuck")]
            bad = [j for j, (s_, _) in enumerate(status) if s_ in ("error", "refused")]
            if not broken and not bad:
                return changed
            changed = True
            for j in bad:
                self._skip(st, j, status[j][1])
            stale = {j for j in broken if self._stale("decode", st.decoder[j], st.decoder_gen[j])}
            for d in sorted({st.decoder[j] for j in broken if j not in stale}):
                why = {status[j][0] for j in broken if st.decoder[j] == d}
                self.pools.replace("decode", d, f"step {st.step}: decode call {'/'.join(sorted(why))}")
            if len(stale) < len(broken):
                self._retry_budget(st, "decode", f"{len(broken)} decode calls")
            for j in broken:
                st.decoder_gen[j] = self._gen("decode", st.decoder[j])
                st.video_refs[j], st.status_refs[j] = self.pools.decode[st.decoder[j]].decode_with_status.remote(
                    self.videos[st.indices[j]])
            if bad:
                keep = [j for j in range(len(st.indices)) if j not in set(bad)]
                if not keep:
                    raise BadSampleError(f"step {st.step}: every sample of the batch was bad")
                st.keep(keep)

    def _collect_rollout(self, st: InFlightStep) -> tuple[list, bool]:
        changed = False
        while True:
            status = wait_classified([c.ref for c in st.rollouts], self.cfg.trainer.rollout_timeout_s)
            failed = [k for k, (s_, _) in enumerate(status) if s_ != "ok"]
            if not failed:
                return [v for _, v in status], changed
            changed = True
            replaced = False
            for k in failed:
                e = st.rollouts[k].engine
                kind, exc = status[k]
                if kind in ("dead", "stuck") and self._stale("rollout", e, st.rollouts[k].gen):
                    continue  # the replacement already serves the current weights
                what = f"{self.pools.name('rollout', e)} generate {kind}" + (f" ({error_text(exc)})" if exc else "")
                if kind == "refused":
                    raise StepFailed(f"step {st.step}: {what}")
                if kind in ("dead", "stuck"):
                    self.pools.replace("rollout", e, f"step {st.step}: {what}")
                    replaced = True
                else:
                    log.warning("step %d: %s: %s — retrying", st.step, what, error_text(exc))
                self._retry_budget(st, "rollout", what)
            if replaced:  # new engines start from the base model: bring them to the current weights first
                self.weights.bring_up_to_date()
            self._submit_rollouts(st, only=failed)

    def _collect_reward(self, st: InFlightStep) -> dict:
        while True:
            (kind, val), = wait_classified([st.metrics_ref], self.cfg.trainer.call_timeout_s)
            if kind == "ok":
                return val
            i = st.reward_actor
            what = f"{self.pools.name('reward', i)} score {kind}"
            if kind in ("dead", "stuck") and self._stale("reward", i, st.reward_gen):
                self._submit_reward(st, st.groups)
                continue
            if kind in ("dead", "stuck"):
                self.pools.replace("reward", i, f"step {st.step}: {what}")
            else:
                log.warning("step %d: %s: %s — retrying", st.step, what, error_text(val))
            self._retry_budget(st, "reward", what)
            self._submit_reward(st, st.groups)

    # ---- counters ------------------------------------------------------------------------------
    def fault_metrics(self, skipped_records: int = 0) -> dict:
        """Repairs so far: actor replacements per role, re-syncs, retried calls, skipped samples
        (bad records at load time plus bad videos during training)."""
        p = self.pools
        out = {f"faults/restarts_{r}": float(n) for r, n in p.restarts.items()}
        out["faults/restarts"] = float(sum(p.restarts.values()))
        out["faults/resyncs"] = float(self.weights.resyncs)
        out["faults/retried_calls"] = float(self.faults["retried_calls"])
        out["faults/skipped_samples"] = float(self.faults["skipped_samples"] + skipped_records)
        return out

    def cache_stats(self) -> dict:
        """Stage B cache counters of the decode pool."""
        st = ray.get([d.stats.remote() for d in self.pools.decode], timeout=self.cfg.trainer.step_timeout_s)
        hits, misses = sum(x["cache_hits"] for x in st), sum(x["cache_misses"] for x in st)
        return {"decode/cache_hits": hits, "decode/cache_misses": misses,
                "decode/cache_rebuilt": sum(x["cache_rebuilt"] for x in st),
                "decode/cache_hit_rate": hits / (hits + misses) if hits + misses else 0.0}
