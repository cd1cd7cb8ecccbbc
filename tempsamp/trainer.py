"""The driver: epochs over the dataset with a seeded sampler; each step
decode -> rollout -> reward -> learn -> sync, orchestrating ObjectRefs only (no tensor passes here).

max_staleness 0 = the original synchronous schedule; 1 = rollout of step k+1 is launched before
learning of step k finishes (engines then serve weights one version old; the learner uses its own
current log-probs as the old policy, as verl does).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import sys
import time
from pathlib import Path

import msgspec
import numpy as np

from .config import Config, config_to_dict
from .observe import object_store_bytes
from .data.records import RecordError, TrainRecord, read_records

log = logging.getLogger("tempsamp.trainer")
STAGES = ("decode", "rollout", "reward", "learn", "sync")


class SamplerState(msgspec.Struct):
    epoch: int = 0
    index: int = 0  # prompts consumed in this epoch


class EpochSampler:
    """Seeded permutation per epoch; drops the last incomplete batch; resumable by (epoch, index)."""

    def __init__(self, n: int, batch: int, seed: int, shuffle: bool = True, state: SamplerState | None = None):
        if n < batch:
            raise ValueError(f"dataset has {n} records, fewer than data.prompts_per_step={batch}")
        self.n, self.batch, self.seed, self.shuffle = n, batch, seed, shuffle
        self.state = state or SamplerState()

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.batch

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng(self.seed + epoch).permutation(self.n)

    def next(self) -> tuple[int, list[int]]:
        if self.state.index + self.batch > self.n:
            self.state = SamplerState(epoch=self.state.epoch + 1, index=0)
        order = self._order(self.state.epoch)
        idx = order[self.state.index: self.state.index + self.batch].tolist()
        epoch = self.state.epoch
        self.state = SamplerState(epoch=epoch, index=self.state.index + self.batch)
        return epoch, idx


# ---- checkpoints ----------------------------------------------------------------------------
def complete_checkpoints(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    out = [p for p in root.glob("global_step_*") if (p / "COMPLETE").is_file() and not p.name.endswith(".tmp")]
    return sorted(out, key=lambda p: int(p.name.rsplit("_", 1)[1]))


def resolve_resume(cfg: Config) -> Path | None:
    r = cfg.checkpoint.resume
    if r == "never":
        return None
    if r == "auto":
        done = complete_checkpoints(cfg.checkpoint.output_dir)
        return done[-1] if done else None
    p = Path(r)
    if not (p / "COMPLETE").is_file():
        raise FileNotFoundError(f"checkpoint.resume={r}: not a complete checkpoint (no COMPLETE marker)")
    return p


def _rng_state() -> dict:
    import torch

    # numpy generators are re-derived from seeds + step, so only these two carry state
    return {"python": repr(random.getstate()), "torch": torch.get_rng_state().tolist()}


class StepLogger:
    def __init__(self, cfg: Config):
        self.dir = Path(cfg.trainer.log_dir) / cfg.trainer.run_name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "steps.jsonl"
        self.f = open(self.path, "a")
        self.metrics = None
        try:
            from .observe import DashboardMetrics

            self.metrics = DashboardMetrics(cfg.trainer.run_name)
        except Exception as e:  # dashboard metrics are optional (no Ray metrics agent)
            log.warning("dashboard metrics disabled (steps.jsonl still written): %s", e)

    def write(self, row: dict) -> None:
        self.f.write(json.dumps(row) + "\n")
        self.f.flush()
        if self.metrics is not None:
            self.metrics.record(row)

    def close(self):
        self.f.close()


def init_ray(num_cpus: int | None = None, num_gpus: int | None = None, spill_dir: str = "") -> None:
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
    pkg_root = str(Path(__file__).resolve().parents[1])
    runtime_env = {"env_vars": {"PYTHONPATH": pkg_root + os.pathsep + os.environ.get("PYTHONPATH", ""),
                                "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
                                "TRANSFORMERS_VERBOSITY": "error"}}
    if not local:
        # a Ray job brings its runtime env (working dir on every worker's path, jobs/runtime_env.yaml's
        # env vars); Ray refuses to merge a second one, so none is passed here
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
    else:
        import tempfile

        spill = spill_dir or os.environ.get("TEMPSAMP_SPILL_DIR") or os.path.join(tempfile.gettempdir(),
                                                                                 "tempsamp-spill")
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                 _node_ip_address="127.0.0.1", runtime_env=runtime_env, log_to_driver=True,
                 object_spilling_directory=spill,
                 _metrics_export_port=int(os.environ.get("TEMPSAMP_METRICS_PORT", "0")) or None)


def ensure_model(cfg: Config, out_root: str) -> str:
    if cfg.model.path:
        return cfg.model.path
    from .models.tiny import build_tiny_model

    return str(build_tiny_model(Path(out_root) / f"tiny_{cfg.model.tiny_family}", cfg.model.tiny_family))


def load_dataset(cfg: Config) -> tuple[list[TrainRecord], list[str]]:
    """Records of data.train_files (or the synthetic set) and the reasons for every record skipped
    (bad line, span beyond duration, missing video — each with file:line). data.on_bad_sample=stop
    raises on the first one instead."""
    files = list(cfg.data.train_files)
    if not files and cfg.data.synthetic_dir:
        from .data.synthetic import generate

        files = [generate(cfg.data.synthetic_dir, n_train=cfg.data.synthetic_n_train, n_bench=2, seed=0)["train_jsonl"]]
    if not files:
        raise ValueError("data.train_files is empty (set it in the config, TIMELENS_TRAIN_FILES, or an override)")
    skip = cfg.data.on_bad_sample == "skip"
    records: list[TrainRecord] = []
    skipped: list[str] = []
    for f in files:
        recs, errs = read_records(f, cfg.data.video_root or None, skip_bad=skip)
        skipped += errs
        for r in recs:
            if not (cfg.data.use_preprocessed and cfg.data.video_source_mode == "preprocessed_only") \
                    and not os.path.exists(r.video):
                msg = f"{r.source}: video not found: {r.video}"
                if not skip:
                    raise RecordError(msg + " (data.on_bad_sample=skip to skip and count)")
                skipped.append(msg)
                continue
            records.append(r)
    for e in skipped[:20]:
        log.warning("skipped bad record: %s", e)
    if len(skipped) > 20:
        log.warning("... and %d more bad records skipped", len(skipped) - 20)
    if skipped:
        print(f"data: {len(records)} records, {len(skipped)} skipped (reasons in the log)", flush=True)
    return records, skipped


class StepFailed(RuntimeError):
    """A step could not complete (retries exhausted, learner died, timeout); the message names the
    stage, role and actor."""


class BadSampleError(RuntimeError):
    """A sample is unusable and data.on_bad_sample=stop."""


def check_staleness(step: int, learner_version: int, rollout_version: int, max_staleness: int) -> int:
    """The weight-version lag of a step's rollouts; raises when it exceeds max_staleness."""
    lag = learner_version - rollout_version
    if lag > max_staleness:
        raise StepFailed(f"step {step}: rollouts sampled with weight version {rollout_version}, learner at "
                         f"{learner_version}: lag {lag} > trainer.max_staleness={max_staleness}")
    if lag < 0:
        raise StepFailed(f"step {step}: rollouts claim weight version {rollout_version}, newer than the "
                         f"learner's {learner_version}")
    return lag


def error_text(exc) -> str:
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"[:500]


def wait_classified(refs: list, timeout: float) -> list[tuple[str, object]]:
    """Wait for all refs (at most `timeout` s) and classify each: ("ok", value), ("dead", exc) when its
    actor died or its engine can no longer serve (EngineDead), ("refused", exc) when the engine refused
    the request (retrying cannot help), ("error", exc) when the call raised otherwise, ("stuck", None)
    when it did not finish in time."""
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

    from .rollout.health import EngineDead, EngineRequestError

    ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout) if refs else ([], [])
    ready = set(ready)
    out: list[tuple[str, object]] = []
    for r in refs:
        if r not in ready:
            out.append(("stuck", None))
            continue
        try:
            out.append(("ok", ray.get(r)))
        except RayActorError as e:
            out.append(("dead", e))
        except RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, (RayActorError, EngineDead)):  # a dependency's actor or the engine died
                out.append(("dead", e))
            else:
                out.append(("refused" if isinstance(cause, EngineRequestError) else "error", e))
        except GetTimeoutError:
            out.append(("stuck", None))
    return out


class Trainer:
    def __init__(self, cfg: Config, model_dir: str | None = None):
        import ray

        from .actors.pools import Pools
        from .data.video import VideoParams
        from .models.loading import detect_family, load_processor
        from .models.policy import render_prompt
        from .placement.plan import make_plan
        from .rollout.support import check_engine_support

        self.cfg = cfg
        self.model_dir = model_dir or ensure_model(cfg, "outputs/models")
        family = detect_family(self.model_dir)
        check_engine_support(cfg, cfg.rollout.backend, family)  # before any actor starts
        self.params = VideoParams.from_config(cfg.video, family)
        self.records, skipped = load_dataset(cfg)
        self.skipped_records = len(skipped)
        d = cfg.data
        if d.use_preprocessed and d.video_source_mode != "realtime_only" and not d.rebuild_cache:
            from .data.cache import check_cache_params

            check_cache_params(d.preprocessed_video_dir, [r.video for r in self.records], self.params)
        self.faults = {"retried_calls": 0, "skipped_samples": 0}
        self.skip_log: list[dict] = []
        processor = self.processor = load_processor(self.model_dir)
        self.prompts = [render_prompt(processor, r.problem, thinking=False) for r in self.records]
        self.answers = [r.span() for r in self.records]
        self.sampler = EpochSampler(len(self.records), cfg.data.prompts_per_step, cfg.data.seed, cfg.data.shuffle)
        spe = self.sampler.steps_per_epoch
        self.total_steps = cfg.trainer.max_steps or spe * cfg.trainer.total_epochs
        cluster = ray.cluster_resources() if cfg.placement.use_gpus else None
        if cluster is not None and cfg.placement.num_nodes * cfg.placement.gpus_per_node < cluster.get("GPU", 0):
            cluster = None  # plan against the configured shape
        self.plan = make_plan(cfg, cluster)
        self.pools = Pools(cfg, self.model_dir, self.plan, self.params, self.total_steps)
        self.version = 0
        self.step = 0
        self.timings = {s: 0.0 for s in STAGES}
        self.logger = StepLogger(cfg)
        resume = resolve_resume(cfg)
        if resume is not None:
            self._resume(resume)

    # ---- checkpointing --------------------------------------------------------------------
    def _resume(self, ckpt: Path) -> None:
        import ray

        state = json.loads((ckpt / "trainer_state.json").read_text())
        steps = ray.get([l.load_shard.remote(str(ckpt)) for l in self.pools.learners],
                        timeout=self.cfg.trainer.step_timeout_s)
        self.step = int(state["step"])
        if any(s != self.step for s in steps):
            raise RuntimeError(f"{ckpt}: learner shards at steps {steps}, trainer state at {self.step}")
        self.sampler.state = msgspec.convert(state["sampler"], SamplerState)
        self.version = int(state["version"])
        self.pools.sync_weights(self.version)  # engines start from the base model: push the checkpoint
        log.info("resumed from %s at step %d (epoch %d, index %d)", ckpt, self.step, self.sampler.state.epoch,
                 self.sampler.state.index)

    def save_checkpoint(self) -> Path:
        import ray

        root = Path(self.cfg.checkpoint.output_dir)
        final = root / f"global_step_{self.step}"
        tmp = root / f"global_step_{self.step}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        ray.get([l.save_shard.remote(str(tmp)) for l in self.pools.learners], timeout=self.cfg.trainer.step_timeout_s)
        if self.cfg.checkpoint.export_hf:
            ray.get([l.export_hf.remote(str(tmp / "actor")) for l in self.pools.learners],
                    timeout=self.cfg.trainer.step_timeout_s)
        state = {"step": self.step, "version": self.version, "sampler": msgspec.to_builtins(self.sampler.state),
                 "rng": _rng_state(), "config": _public_config(self.cfg), "model_dir": self.model_dir}
        (tmp / "trainer_state.json").write_text(json.dumps(state))
        (tmp / "COMPLETE").write_text(str(time.time()))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        done = complete_checkpoints(root)
        for old in done[: max(0, len(done) - self.cfg.checkpoint.save_limit)]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    # ---- one step -------------------------------------------------------------------------
    # The fast path submits decode -> rollout -> reward as one chain of ObjectRefs (nothing waits).
    # Collection then waits stage by stage; a dead or stuck actor is replaced and only its part of the
    # chain resubmitted; a bad video is skipped (counted, logged) or stops the run (data.on_bad_sample).
    def _launch_rollout(self, step: int) -> dict:
        epoch, idx = self.sampler.next()
        st = {"step": step, "epoch": epoch, "indices": list(idx)}
        p = self.pools
        st["decoder"] = [j % len(p.decode) for j in range(len(idx))]
        st["video_refs"], st["status_refs"] = [], []
        for j, i in enumerate(idx):
            v, s_ = p.decode[st["decoder"][j]].decode_with_status.remote(self.records[i].video)
            st["video_refs"].append(v)
            st["status_refs"].append(s_)
        self._submit_rollouts(st)
        self._submit_reward(st)
        return st

    def _spec(self, step: int):
        from .rollout.base import SamplingSpec, step_seed

        return SamplingSpec.from_rollout(self.cfg.rollout, step_seed(self.cfg.rollout.seed, step))

    def _submit_rollouts(self, st: dict, only: list[int] | None = None) -> None:
        """(Re)submit generate calls: prompt j of the step goes to engine j % engines."""
        from .rollout.base import PromptRequest

        p = self.pools
        if only is None:
            st["roll"] = []
            for e in range(len(p.engines)):
                js = list(range(e, len(st["indices"]), len(p.engines)))
                if js:
                    st["roll"].append([e, js, None])
            only = list(range(len(st["roll"])))
        spec = self._spec(st["step"])
        for k in only:
            e, js, _ = st["roll"][k]
            reqs = [PromptRequest(key=j, prompt_text=self.prompts[st["indices"][j]]) for j in js]
            st["roll"][k][2] = p.engines[e].generate.remote(reqs, spec, *[st["video_refs"][j] for j in js])

    def _submit_reward(self, st: dict, rollouts: list | None = None) -> None:
        """Score the step's rollouts: the engines' refs on the fast path, or the already collected
        groups when only the reward call is redone. The driver waits on the small metrics object;
        the batch itself goes from the object store to the learners."""
        p = self.pools
        idx = st["indices"]
        st["reward_i"] = st["step"] % len(p.reward)
        st["batch_ref"], st["metrics_ref"] = p.reward[st["reward_i"]].score_with_metrics.remote(
            st["step"], [self.answers[i] for i in idx], [self.prompts[i] for i in idx], st["video_refs"],
            *(rollouts if rollouts is not None else [r[2] for r in st["roll"]]))

    def _retry_budget(self, st: dict, stage: str, what: str) -> None:
        st.setdefault("attempts", {}).setdefault(stage, 0)
        st["attempts"][stage] += 1
        self.faults["retried_calls"] += 1
        if st["attempts"][stage] > self.cfg.trainer.max_retries:
            raise StepFailed(f"step {st['step']}: {stage} failed after {self.cfg.trainer.max_retries} retries: {what}")

    def _collect_decode(self, st: dict) -> bool:
        """Wait for every video; returns True when the chain had to change."""
        changed = False
        while True:
            status = wait_classified(st["status_refs"], self.cfg.trainer.call_timeout_s)
            broken = [j for j, (s_, _) in enumerate(status) if s_ in ("dead", "stuck")]
            bad = [j for j, (s_, _) in enumerate(status) if s_ == "error"]
            if not broken and not bad:
                return changed
            changed = True
            for j in bad:
                rec = self.records[st["indices"][j]]
                why = f"video {rec.video} ({rec.source or 'record'}): {error_text(status[j][1])}"
                if self.cfg.data.on_bad_sample == "stop":
                    raise BadSampleError(f"step {st['step']}: {why} (data.on_bad_sample=skip to skip and count)")
                log.warning("step %d: skipping sample: %s", st["step"], why)
                self.faults["skipped_samples"] += 1
                self.skip_log.append({"step": st["step"], "video": rec.video, "source": rec.source,
                                      "reason": error_text(status[j][1])})
            for d in sorted({st["decoder"][j] for j in broken}):
                why = {status[j][0] for j in broken if st["decoder"][j] == d}
                self.pools.replace("decode", d, f"step {st['step']}: decode call {'/'.join(sorted(why))}")
            if broken:
                self._retry_budget(st, "decode", f"{len(broken)} decode calls")
            for j in broken:
                v, s_ = self.pools.decode[st["decoder"][j]].decode_with_status.remote(
                    self.records[st["indices"][j]].video)
                st["video_refs"][j], st["status_refs"][j] = v, s_
            if bad:
                keep = [j for j in range(len(st["indices"])) if j not in set(bad)]
                if not keep:
                    raise BadSampleError(f"step {st['step']}: every sample of the batch was bad")
                for key in ("indices", "decoder", "video_refs", "status_refs"):
                    st[key] = [st[key][j] for j in keep]

    def _collect_rollout(self, st: dict) -> tuple[list, bool]:
        changed = False
        while True:
            status = wait_classified([r[2] for r in st["roll"]], self.cfg.trainer.rollout_timeout_s)
            failed = [k for k, (s_, _) in enumerate(status) if s_ != "ok"]
            if not failed:
                return [v for _, v in status], changed
            changed = True
            replaced = False
            for k in failed:
                e = st["roll"][k][0]
                kind, exc = status[k]
                what = f"{self.pools.name('rollout', e)} generate {kind}" + (f" ({error_text(exc)})" if exc else "")
                if kind == "refused":
                    raise StepFailed(f"step {st['step']}: {what}")
                if kind in ("dead", "stuck"):
                    self.pools.replace("rollout", e, f"step {st['step']}: {what}")
                    replaced = True
                else:
                    log.warning("step %d: %s: %s — retrying", st["step"], what, error_text(exc))
                self._retry_budget(st, "rollout", what)
            if replaced:  # new engines start from the base model: bring them to the current weights first
                self.pools.rebuild_weight_group()
                self.pools.sync_weights(self.version)
            self._submit_rollouts(st, only=failed)

    def _collect_reward(self, st: dict) -> dict:
        while True:
            (kind, val), = wait_classified([st["metrics_ref"]], self.cfg.trainer.call_timeout_s)
            if kind == "ok":
                return val
            i = st["reward_i"]
            what = f"{self.pools.name('reward', i)} score {kind}"
            if kind in ("dead", "stuck"):
                self.pools.replace("reward", i, f"step {st['step']}: {what}")
            else:
                log.warning("step %d: %s: %s — retrying", st["step"], what, error_text(val))
            self._retry_budget(st, "reward", what)
            self._submit_reward(st, st["groups"])

    def _collect(self, st: dict) -> tuple[dict, dict]:
        """Wait for decode -> rollout -> reward of a launched step, repairing as needed."""
        t0 = time.time()
        changed = self._collect_decode(st)
        t_dec = time.time()
        if changed:
            self._submit_rollouts(st)
        st["groups"], roll_changed = self._collect_rollout(st)
        t_roll = time.time()
        if changed or roll_changed:
            self._submit_reward(st)
        metrics = self._collect_reward(st)
        t_rew = time.time()
        return metrics, {"decode": t_dec - t0, "rollout": t_roll - t_dec, "reward": t_rew - t_roll}

    def run(self) -> dict:
        import ray

        cfg = self.cfg
        timeout = cfg.trainer.step_timeout_s
        pending = None
        last = {}
        t_start = time.time()
        while self.step < self.total_steps:
            step = self.step + 1
            t0 = time.time()
            st = pending if pending is not None else self._launch_rollout(step)
            pending = None
            batch_metrics, stage = self._collect(st)
            t_rew = time.time()
            lag = check_staleness(step, self.version, int(batch_metrics["batch/min_weight_version"]),
                                  cfg.trainer.max_staleness)
            learn_refs = [l.train_step.remote(st["batch_ref"]) for l in self.pools.learners]
            if cfg.trainer.max_staleness >= 1 and step < self.total_steps:
                pending = self._launch_rollout(step + 1)  # overlaps with learning of this step
            try:
                learn = ray.get(learn_refs, timeout=timeout)[0]
            except ray.exceptions.RayActorError as e:
                raise StepFailed(f"step {step}: a learner rank died ({type(e).__name__}); the FSDP group cannot "
                                 f"continue — rerun with checkpoint.resume=auto to continue from the last "
                                 f"checkpoint") from None
            except ray.exceptions.GetTimeoutError:
                raise StepFailed(f"step {step}: learner step exceeded trainer.step_timeout_s={timeout}s") from None
            t_learn = time.time()
            self.version += 1
            sync = self.pools.sync_weights(self.version)
            t_sync = time.time()
            self.step = step
            stage.update({"learn": t_learn - t_rew, "sync": t_sync - t_learn})
            for k, v in stage.items():
                self.timings[k] += v
            rows = batch_metrics["batch/rows"]
            row = {"step": step, "epoch": st["epoch"], "version": self.version, "batch/indices": st["indices"],
                   "rollout/weight_version_lag": lag,
                   **batch_metrics,
                   **{f"learn/{k}": v for k, v in learn.items()}, **sync,
                   **{f"time/{k}": v for k, v in stage.items()}, "time/step": t_sync - t0,
                   "throughput/samples_per_s": rows / max(1e-9, t_sync - t0),
                   "throughput/tokens_per_s": batch_metrics["batch/tokens"] / max(1e-9, t_learn - t_rew),
                   **self._fault_metrics(), "mem/object_store_bytes": object_store_bytes()}
            if cfg.data.use_preprocessed:
                row.update(self._cache_stats())
            del st, learn_refs  # release this step's videos and batch from the object store
            self.logger.write(row)
            last = row
            print(f"[{cfg.trainer.run_name}] step {step}/{self.total_steps} "
                  f"score {row['reward/raw_score_mean_no_gt']:.3f} (shaped {row['reward/score_mean_no_gt']:.3f}, "
                  f"w/ GT {row['reward/score_mean']:.3f}) "
                  f"iou {row['reward/iou_mean_no_gt']:.3f} fmt {row['reward/format_rate_no_gt']:.2f} "
                  + (f"gt_logp {learn['gt_logp_per_token']:.2f} " if learn['gt_logp_per_token'] == learn['gt_logp_per_token'] else "")
                  + f"| {row['time/step']:.1f}s", flush=True)
            if cfg.checkpoint.save_freq and step % cfg.checkpoint.save_freq == 0:
                self.save_checkpoint()
            if cfg.eval.val_freq and step % cfg.eval.val_freq == 0:
                self.validate()
        total = sum(self.timings.values()) or 1.0
        shares = {k: v / total for k, v in self.timings.items()}
        print("stage time shares: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in shares.items()))
        return {"last": last, "stage_seconds": self.timings, "stage_shares": shares,
                "wall_s": time.time() - t_start, "log": str(self.logger.path), "faults": self._fault_metrics()}

    def _fault_metrics(self) -> dict:
        p = self.pools
        out = {f"faults/restarts_{r}": float(n) for r, n in p.restarts.items()}
        out["faults/restarts"] = float(sum(p.restarts.values()))
        out["faults/resyncs"] = float(p.resyncs)
        out["faults/retried_calls"] = float(self.faults["retried_calls"])
        out["faults/skipped_samples"] = float(self.faults["skipped_samples"] + self.skipped_records)
        return out

    def _cache_stats(self) -> dict:
        import ray

        st = ray.get([d.stats.remote() for d in self.pools.decode], timeout=self.cfg.trainer.step_timeout_s)
        hits, misses = sum(x["cache_hits"] for x in st), sum(x["cache_misses"] for x in st)
        return {"decode/cache_hits": hits, "decode/cache_misses": misses,
                "decode/cache_rebuilt": sum(x["cache_rebuilt"] for x in st),
                "decode/cache_hit_rate": hits / (hits + misses) if hits + misses else 0.0}

    def validate(self) -> dict:
        """TimeLens-Bench on the rollout engines (current weights) and the decode actors (eval video
        parameters); outputs under `<log_dir>/<run>/val/step_N/`, metrics into the step log."""
        from .evaluation.bench import load_bench
        from .evaluation.runner import eval_video_params, generate_predictions, write_outputs
        from .models.loading import detect_family

        e = self.cfg.eval
        if not e.bench_dir:
            raise ValueError("eval.val_freq is set but eval.bench_dir is empty (or set BENCH_DIR)")
        samples, _ = load_bench(e.bench_dir, list(e.datasets), e.skip_missing_videos)
        if e.val_max_samples:
            per_ds: dict[str, list] = {}
            for s in samples:
                per_ds.setdefault(s.dataset, []).append(s)
            samples = [s for group in per_ds.values() for s in group[: e.val_max_samples]]
        t = time.time()
        preds: list = []
        params = eval_video_params(self.cfg, detect_family(self.model_dir))
        generate_predictions(samples, self.pools.engines, self.pools.decode, params, self.processor, self.cfg,
                             preds.extend, e.skip_missing_videos, progress=False)
        out = Path(self.logger.dir) / "val" / f"step_{self.step}"
        out.mkdir(parents=True, exist_ok=True)
        metrics, *_ = write_outputs(preds, {p.key for p in preds}, list(e.datasets), out, e.parse_mode,
                                    {"model": f"{self.cfg.trainer.run_name}@step{self.step}", "step": self.step})
        row = {"step": self.step, "val/seconds": time.time() - t,
               **{f"val/{ds}/{k}": v for ds, m in metrics.items() for k, v in m.items()}}
        self.logger.write(row)
        print(f"[{self.cfg.trainer.run_name}] val step {self.step}: " + ", ".join(
            f"{ds} mIoU {m['mIoU']:.2f} R1@0.5 {m['R1@0.5']:.1f}" for ds, m in metrics.items()), flush=True)
        return metrics

    def shutdown(self) -> None:
        self.logger.close()
        self.pools.shutdown()


def _public_config(cfg: Config) -> dict:
    """Config as saved with a checkpoint. It holds no secrets by design: the Ray token and any hub
    credentials come from the environment and are never config fields."""
    return config_to_dict(cfg)


def train_main(cfg: Config, config_path: str | None = None) -> int:
    init_ray(spill_dir=cfg.trainer.spill_dir)
    trainer = Trainer(cfg)
    try:
        out = trainer.run()
        print(json.dumps({"stage_shares": out["stage_shares"], "log": out["log"]}))
    finally:
        trainer.shutdown()
    return 0
