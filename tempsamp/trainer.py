"""The driver: epochs over the dataset with a seeded sampler; each step
launch rollouts (decode -> rollout -> reward) -> collect -> staleness check -> learn -> sync -> log ->
checkpoint / validate. Only ObjectRefs pass through here; repair of a step lives in `actors/step.py`,
the weight broadcast in `actors/weight_sync.py`, checkpoint files in `learner/checkpoint.py`.

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
from .learner import checkpoint as ckpt_files
from .steplog import StepLogger, stage_shares, step_row

log = logging.getLogger("tempsamp.trainer")
STAGES = ("decode", "rollout", "reward", "learn", "sync")


class Trainer:
    def __init__(self, cfg: Config, model_dir: str | None = None):
        from .actors.learner_group import LearnerGroup
        from .actors.pools import Pools, training_actors
        from .actors.step import StepRunner
        from .actors.weight_sync import WeightBroadcast
        from .cluster import cluster_resources
        from .data.cache import check_cache_params
        from .data.video import VideoParams
        from .models.loading import detect_family, load_processor
        from .models.policy import render_prompt
        from .models.tiny import ensure_model
        from .placement.plan import make_plan, resolve_use_gpus
        from .rollout.support import check_engine_support

        cluster = cluster_resources() if cfg.placement.use_gpus is not False else None  # CPU plan: no Ray needed yet
        self.cfg = cfg = resolve_use_gpus(cfg, cluster)
        self.recipe = effective_recipe(cfg)
        self.model_dir = model_dir or ensure_model(cfg)
        self.family = detect_family(self.model_dir)
        check_engine_support(cfg, cfg.rollout.backend, self.family)  # before any actor starts
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
        self.version = 0
        self.step = 0
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
        cfg = self.cfg
        pending = None
        last: dict = {}
        t_start = time.time()
        while self.step < self.total_steps:
            step = self.step + 1
            t0 = time.time()
            st = pending if pending is not None else self._launch(step)
            pending = None
            batch, stages = self.steps.collect(st)
            batches = [st.batch_ref]
            if self.recipe.filter_groups:  # dynamic sampling: more prompts until the batch is informative
                batches = self._fill_informative(st, batch, stages)
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
            self.step = step
            stages.update({"learn": t_learn - t_rew, "sync": t_sync - t_learn})
            for k, v in stages.items():
                self.timings[k] += v
            row = step_row(step, st.epoch, self.version, st.indices, lag, batch, learn, sync, stages,
                           step_s=t_sync - t0, learn_s=t_learn - t_rew, faults=self.fault_metrics(),
                           extra=self._resource_metrics())
            del st, learning  # release this step's videos and batch from the object store
            self.logger.write(row)
            last = row
            if cfg.checkpoint.save_freq and step % cfg.checkpoint.save_freq == 0:
                self.save_checkpoint()
            if cfg.eval.val_freq and step % cfg.eval.val_freq == 0:
                self.validate()
        c = cfg.checkpoint
        if c.save_freq and self.step % c.save_freq and self.step == self.total_steps:
            self.save_checkpoint()  # the last step is kept even off the save_freq grid
        shares = stage_shares(self.timings)
        print("stage time shares: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in shares.items()))
        return {"last": last, "stage_seconds": self.timings, "stage_shares": shares,
                "wall_s": time.time() - t_start, "log": str(self.logger.path), "faults": self.fault_metrics()}

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
        return self.steps.fault_metrics(self.skipped_records)

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
        c = self.cfg.checkpoint
        tmp = ckpt_files.staging_dir(c.output_dir, self.step)
        self.learners.save(str(tmp), c.export_hf)
        state = {"step": self.step, "version": self.version, "sampler": msgspec.to_builtins(self.sampler.state),
                 "config": _public_config(self.cfg), "model_dir": self.model_dir}
        return ckpt_files.finalize_checkpoint(tmp, ckpt_files.checkpoint_dir(c.output_dir, self.step), state,
                                              c.save_limit)

    def _resume(self, ckpt: Path) -> None:
        state = ckpt_files.read_trainer_state(ckpt)
        steps = self.learners.load(str(ckpt))
        self.step = int(state["step"])
        if any(s != self.step for s in steps):
            raise RuntimeError(f"{ckpt}: learner shards at steps {steps}, trainer state at {self.step}")
        self.sampler.state = msgspec.convert(state["sampler"], SamplerState)
        self.version = int(state["version"])
        self.weights.sync(self.version)  # engines start from the base model: push the checkpoint
        log.info("resumed from %s at step %d (epoch %d, index %d)", ckpt, self.step, self.sampler.state.epoch,
                 self.sampler.state.index)

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
    from .cluster import init_ray
    from .preflight import check_train

    check_train(cfg)  # paths, disk, Ray address: every problem at once, before Ray or any actor starts
    init_ray(spill_dir=cfg.trainer.spill_dir, metrics_port=cfg.trainer.metrics_port)
    trainer = Trainer(cfg)
    try:
        out = trainer.run()
        print(json.dumps({"stage_shares": out["stage_shares"], "log": out["log"]}))
    finally:
        trainer.shutdown()
    return 0
