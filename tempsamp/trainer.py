"""The driver: epochs over the dataset with a seeded sampler; each step
launch rollouts (decode -> rollout -> reward) -> collect -> staleness check -> learn -> sync -> log ->
checkpoint / validate. Only ObjectRefs pass through here; repair of a step lives in `actors/step.py`,
the weight broadcast in `actors/weight_sync.py`, a broken learner group's restart in
`actors/recovery.py`, stopping on SIGTERM / SIGINT in `preemption.py`, checkpoint files in
`learner/checkpoint.py`.

max_staleness 0 = the original synchronous schedule; 1 = rollout of step k+1 is launched before
learning of step k finishes (engines then serve weights one version old; the learner uses its own
current log-probs as the old policy, as verl does).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import msgspec

from .algo.staleness import check_staleness
from .config import Config, config_to_dict, describe_recipe, effective_recipe
from .data.dataset import load_dataset
from .data.sampler import EpochSampler, SamplerState
from .errors import PREEMPTED_EXIT, LearnerFailed
from .learner import checkpoint as ckpt_files
from .preemption import PreemptionGuard
from .steplog import StepLogger, stage_shares, step_row

log = logging.getLogger("tempsamp.trainer")
STAGES = ("decode", "rollout", "reward", "learn", "sync")


class Trainer:
    def __init__(self, cfg: Config, model_dir: str | None = None, preempt: PreemptionGuard | None = None):
        from .actors.learner_group import LearnerGroup
        from .actors.pools import Pools, training_actors
        from .actors.recovery import LearnerRecovery
        from .actors.step import StepRunner
        from .actors.weight_sync import WeightBroadcast
        from .cluster import cluster_resources
        from .data.cache import check_cache_params
        from .data.video import VideoParams
        from .models.loading import detect_family, load_processor
        from .models.policy import render_prompt
        from .models.tiny import ensure_model
        from .placement.memory import check_run_memory
        from .placement.plan import make_plan, resolve_use_gpus
        from .rollout.support import check_engine_support

        cluster = cluster_resources() if cfg.placement.use_gpus is not False else None  # CPU plan: no Ray needed yet
        self.cfg = cfg = resolve_use_gpus(cfg, cluster)
        self.recipe = effective_recipe(cfg)
        self.model_dir = model_dir or ensure_model(cfg)
        self.family = detect_family(self.model_dir)
        check_engine_support(cfg, cfg.rollout.backend, self.family)  # before any actor starts
        check_run_memory(cfg, self.model_dir)  # GPU plans: a role that cannot fit one GPU stops here, named
        self.params = VideoParams.from_config(cfg.video, self.family)
        self.records, skipped = load_dataset(cfg)
        self.skipped_records = len(skipped)
        d = cfg.data
        if d.use_preprocessed and d.video_source_mode != "realtime_only" and not d.rebuild_cache:
            check_cache_params(d.preprocessed_video_dir, [r.video for r in self.records], self.params)
        self.processor = load_processor(self.model_dir)
        prompts = [render_prompt(self.processor, r.problem, thinking=False) for r in self.records]
        self.sampler = EpochSampler(len(self.records), d.prompts_per_step, d.seed, d.shuffle)
        self.total_steps = cfg.trainer.max_steps or self.sampler.steps_per_epoch * cfg.trainer.total_epochs
        if not cfg.placement.use_gpus or cluster is None or \
                cfg.placement.num_nodes * cfg.placement.gpus_per_node < cluster.get("GPU", 0):
            cluster = None  # plan against the configured shape
        self.plan = make_plan(cfg, cluster)
        print(describe_recipe(cfg), flush=True)
        self.pools = Pools(self.plan, training_actors(cfg, self.model_dir, self.params), cfg.trainer.run_name,
                           cfg.trainer.actor_start_timeout_s)
        try:
            self.learners = LearnerGroup(self.pools.learners, cfg, self.model_dir, self.total_steps)
            self.weights = WeightBroadcast(cfg, self.pools, self.learners.host)
        except BaseException:
            self.pools.shutdown()  # no actor or placement group outlives a failed start
            raise
        self.steps = StepRunner(cfg, self.pools, self.weights, [r.video for r in self.records], prompts,
                                [r.span() for r in self.records], [r.source for r in self.records])
        self.recovery = LearnerRecovery(cfg, self.pools, self.weights, self.model_dir)
        self.preempt = preempt or PreemptionGuard(cfg.trainer.preempt_grace_s)  # inert unless entered
        self.version = 0
        self.step = 0
        self.drawn = self.sampler.state  # the sampler after the last finished step's draws (what a checkpoint keeps)
        self.restore_point: Path | None = None  # the last checkpoint this run wrote or resumed from
        self.timings = {s: 0.0 for s in STAGES}
        self.logger = StepLogger(cfg, self.total_steps)
        resume = ckpt_files.resolve_resume(cfg)
        if resume is not None:
            self._resume(resume)

    # ---- the loop -------------------------------------------------------------------------------
    def _launch(self, step: int):
        epoch, idx = self.sampler.next()
        return self.steps.launch(step, epoch, idx)

    def run(self) -> dict:
        """Train until `total_steps`, or until a SIGTERM / SIGINT (then "preempted" in the result: the
        checkpoint to resume from). A learner rank that dies or hangs is restarted with its group and
        the run continues from the last checkpoint (`_recover`)."""
        pending = None
        last: dict = {}
        t_start = time.time()
        try:
            while self.step < self.total_steps and not self.preempt.requested:
                try:
                    last, pending = self._train_step(pending)
                except LearnerFailed as e:
                    pending = None  # rollouts launched for a step that the restore point will redo
                    self._recover(e)
        except KeyboardInterrupt:
            if self.preempt.stopped is None:  # not a stop that the guard asked for
                raise
        c = self.cfg.checkpoint
        if c.save_freq and self.step % c.save_freq and self.step == self.total_steps:
            self.save_checkpoint()  # the last step is kept even off the save_freq grid
        shares = stage_shares(self.timings)
        print("stage time shares: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in shares.items()))
        out = {"last": last, "stage_seconds": self.timings, "stage_shares": shares,
               "wall_s": time.time() - t_start, "log": str(self.logger.path), "faults": self.fault_metrics()}
        if self.preempt.requested and self.step < self.total_steps:  # (a run that finished anyway is done)
            out["preempted"] = self._checkpoint_on_preemption()
        return out

    def _train_step(self, pending) -> tuple[dict, object]:
        """One step; returns its metrics row and the next step's rollouts when they were launched early."""
        cfg = self.cfg
        step = self.step + 1
        t0 = time.time()
        with self.preempt.abandonable():  # the learner has not seen this step: a stop may drop it
            st = pending if pending is not None else self._launch(step)
            pending = None
            batch, stages = self.steps.collect(st)
            batches = [st.batch_ref]
            if self.recipe.filter_groups:  # dynamic sampling: more prompts until the batch is informative
                batches = self._fill_informative(st, batch, stages)
        drawn = self.sampler.state
        t_rew = time.time()
        lag = check_staleness(step, self.version, int(batch["batch/min_weight_version"]), cfg.trainer.max_staleness)
        learning = self.learners.start_step(batches, max_groups=cfg.data.prompts_per_step if len(batches) > 1 else 0)
        if cfg.trainer.max_staleness >= 1 and step < self.total_steps:
            pending = self._launch(step + 1)  # overlaps with learning of this step
        learn = self.learners.finish_step(step, learning)
        if self.recipe.filter_groups:  # what the learner trained on, after filtering
            batch.update({"batch/rows": learn["batch_rows"], "batch/tokens": learn["batch_tokens"]})
        t_learn = time.time()
        self.version += 1
        sync = self.weights.sync(self.version)
        t_sync = time.time()
        self.step, self.drawn = step, drawn
        stages.update({"learn": t_learn - t_rew, "sync": t_sync - t_learn})
        for k, v in stages.items():
            self.timings[k] += v
        row = step_row(step, st.epoch, self.version, st.indices, lag, batch, learn, sync, stages,
                       step_s=t_sync - t0, learn_s=t_learn - t_rew, faults=self.fault_metrics(),
                       extra=self._resource_metrics())
        del st, learning  # release this step's videos and batch from the object store
        self.logger.write(row)
        if cfg.checkpoint.save_freq and step % cfg.checkpoint.save_freq == 0:
            self.save_checkpoint()
        if cfg.eval.val_freq and step % cfg.eval.val_freq == 0:
            self.validate()
        return row, pending

    def _fill_informative(self, st, batch: dict, stages: dict) -> list:
        """Draw `data.prompts_per_step` more prompts (at most algorithm.filter_max_rounds times) while
        fewer informative groups than that were kept; returns every round's batch ref, updates the
        step's metrics (filter/*, the lowest weight version) and stage times in place."""
        want, refs, kept = self.cfg.data.prompts_per_step, [st.batch_ref], batch["filter/kept_groups"]
        while kept < want and len(refs) <= self.cfg.algorithm.filter_max_rounds:
            epoch, idx = self.sampler.next()
            extra = self.steps.launch(st.step, epoch, idx, round=len(refs))
            m, t = self.steps.collect(extra)
            for k, v in t.items():
                stages[k] += v
            refs.append(extra.batch_ref)
            kept += m["filter/kept_groups"]
            batch["batch/min_weight_version"] = min(batch["batch/min_weight_version"], m["batch/min_weight_version"])
            st.indices = st.indices + extra.indices
        batch.update({"filter/kept_groups": float(min(kept, want)), "filter/rounds": float(len(refs) - 1),
                      "filter/sampled_groups": float(len(refs) * want)})
        return refs

    def fault_metrics(self) -> dict:
        return {**self.steps.fault_metrics(self.skipped_records),
                "faults/learner_restarts": float(self.recovery.restarts)}

    @property
    def skip_log(self) -> list[dict]:
        return self.steps.skip_log

    def _resource_metrics(self) -> dict:
        from .observe import object_store_bytes

        out = {"mem/object_store_bytes": object_store_bytes()}
        if self.cfg.data.use_preprocessed:
            out.update(self.steps.cache_stats())
        return out

    # ---- checkpoints and validation --------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Checkpoint the last finished step: learner shards, and the sampler as it was after that
        step's draws (not after rollouts launched early for the next one)."""
        c = self.cfg.checkpoint
        tmp = ckpt_files.staging_dir(c.output_dir, self.step)
        self.learners.save(str(tmp), c.export_hf)
        state = {"step": self.step, "version": self.version, "sampler": msgspec.to_builtins(self.drawn),
                 "config": _public_config(self.cfg), "model_dir": self.model_dir}
        self.restore_point = ckpt_files.finalize_checkpoint(
            tmp, ckpt_files.checkpoint_dir(c.output_dir, self.step), state, c.save_limit)
        return self.restore_point

    def _resume(self, ckpt: Path) -> None:
        state = ckpt_files.read_trainer_state(ckpt)
        steps = self.learners.load(str(ckpt))
        self.step = int(state["step"])
        if any(s != self.step for s in steps):
            raise RuntimeError(f"{ckpt}: learner shards at steps {steps}, trainer state at {self.step}")
        self.sampler.state = self.drawn = msgspec.convert(state["sampler"], SamplerState)
        self.version = int(state["version"])
        self.restore_point = ckpt
        self.weights.sync(self.version)  # engines start from the base model: push the checkpoint
        log.info("resumed from %s at step %d (epoch %d, index %d)", ckpt, self.step, self.sampler.state.epoch,
                 self.sampler.state.index)

    def _recover(self, failure: LearnerFailed) -> None:
        """A learner rank died or hung: a new learner group (actors/recovery.py; raises once
        trainer.max_learner_restarts are used up), then back to the last checkpoint this run wrote or
        resumed from, or to the start. The steps after it are redone with the same batches."""
        while True:
            self.learners = self.recovery.restart(failure, self.learners)
            try:
                self._restore()
                return
            except LearnerFailed as again:  # the new group broke while restoring
                failure = again

    def _restore(self) -> None:
        point = self.restore_point
        if point is not None:
            self._resume(point)
        else:  # no checkpoint yet: the new group holds the base model, the run starts over
            self.step, self.version, self.sampler.state = 0, 0, SamplerState()
            self.drawn = self.sampler.state
            self.weights.sync(self.version)
        self.logger.rewind(self.step)
        print(f"[{self.cfg.trainer.run_name}] learner restarted ({self.recovery.restarts}/{self.recovery.limit}): "
              f"continuing from {point or 'the start'} at step {self.step}; steps {self.step + 1}.. are redone "
              f"with the same batches", flush=True)

    def _checkpoint_on_preemption(self) -> Path | None:
        """After a SIGTERM / SIGINT: checkpoint the last finished step unless the learner was stopped
        mid-step (`overdue`) or that step is already saved; returns the checkpoint a resume starts from."""
        self.preempt.settle()
        if self.preempt.overdue or self.step == 0:
            return _newest_checkpoint(self.cfg)
        if self.restore_point is not None and self.restore_point.name == ckpt_files.checkpoint_dir("", self.step).name:
            return self.restore_point
        return self.save_checkpoint()

    def validate(self) -> dict:
        """TimeLens-Bench on the rollout engines (current weights); outputs under
        `<log_dir>/<run>/val/step_N/`, metrics into the step log."""
        from .evaluation.in_training import validate_on_pools

        t = time.time()
        metrics = validate_on_pools(self.cfg, self.pools.engines, self.pools.decode, self.family, self.processor,
                                    self.step, Path(self.logger.dir) / "val" / f"step_{self.step}")
        self.logger.write({"step": self.step, "val/seconds": time.time() - t,
                           **{f"val/{ds}/{k}": v for ds, m in metrics.items() for k, v in m.items()}})
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
    """Train; 0 when done, PREEMPTED_EXIT (75) after a SIGTERM / SIGINT, with a one-line resume hint."""
    from .cluster import init_ray
    from .preflight import check_train

    check_train(cfg)  # paths, disk, Ray address: every problem at once, before Ray or any actor starts
    init_ray(spill_dir=cfg.trainer.spill_dir, metrics_port=cfg.trainer.metrics_port)
    trainer = None
    with PreemptionGuard(cfg.trainer.preempt_grace_s) as guard:
        try:
            with guard.abandonable():  # nothing trained yet: a stop during start-up just ends the run
                trainer = Trainer(cfg, preempt=guard)
            out = trainer.run()
            print(json.dumps({"stage_shares": out["stage_shares"], "log": out["log"]}))
        except KeyboardInterrupt:
            if guard.stopped is None:  # not a stop that the guard asked for
                raise
            out = {"preempted": _newest_checkpoint(cfg)}  # stopped before run() could checkpoint
        finally:
            if trainer is not None:
                trainer.shutdown()
    if "preempted" not in out:
        return 0
    ckpt = out["preempted"]
    why = guard.stopped or f"{guard.requested}, step {trainer.step} finished"
    where = f"resumes from {ckpt}" if ckpt else "finds no checkpoint and starts over"
    print(f"[{cfg.trainer.run_name}] preempted ({why}); exit status {PREEMPTED_EXIT}. Resume: rerun the same "
          f"command with checkpoint.resume=auto (it {where}).", flush=True)
    return PREEMPTED_EXIT


def _newest_checkpoint(cfg: Config) -> Path | None:
    """The checkpoint `checkpoint.resume=auto` would pick."""
    return ckpt_files.resolve_resume(msgspec.structs.replace(
        cfg, checkpoint=msgspec.structs.replace(cfg.checkpoint, resume="auto")))
