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
from .data.records import TrainRecord, read_records

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
            log.debug("dashboard metrics disabled: %s", e)

    def write(self, row: dict) -> None:
        self.f.write(json.dumps(row) + "\n")
        self.f.flush()
        if self.metrics is not None:
            self.metrics.record(row)

    def close(self):
        self.f.close()


def init_ray(num_cpus: int | None = None, num_gpus: int | None = None) -> None:
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
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                 _node_ip_address="127.0.0.1", runtime_env=runtime_env, log_to_driver=True,
                 _metrics_export_port=int(os.environ.get("TEMPSAMP_METRICS_PORT", "0")) or None)


def ensure_model(cfg: Config, out_root: str) -> str:
    if cfg.model.path:
        return cfg.model.path
    from .models.tiny import build_tiny_model

    return str(build_tiny_model(Path(out_root) / f"tiny_{cfg.model.tiny_family}", cfg.model.tiny_family))


def load_dataset(cfg: Config) -> list[TrainRecord]:
    files = list(cfg.data.train_files)
    if not files and cfg.data.synthetic_dir:
        from .data.synthetic import generate

        files = [generate(cfg.data.synthetic_dir, n_train=cfg.data.synthetic_n_train, n_bench=2, seed=0)["train_jsonl"]]
    if not files:
        raise ValueError("data.train_files is empty (set it in the config, TIMELENS_TRAIN_FILES, or an override)")
    records: list[TrainRecord] = []
    for f in files:
        recs, errs = read_records(f, cfg.data.video_root or None, skip_bad=cfg.data.on_bad_sample == "skip")
        for e in errs:
            log.warning("skipped bad record: %s", e)
        records += recs
    return records


class Trainer:
    def __init__(self, cfg: Config, model_dir: str | None = None):
        import ray

        from .actors.pools import Pools
        from .data.video import VideoParams
        from .models.loading import detect_family, load_processor
        from .models.policy import render_prompt
        from .placement.plan import make_plan

        self.cfg = cfg
        self.model_dir = model_dir or ensure_model(cfg, "outputs/models")
        family = detect_family(self.model_dir)
        self.params = VideoParams.from_config(cfg.video, family)
        self.records = load_dataset(cfg)
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
        steps = ray.get([l.load_shard.remote(str(ckpt)) for l in self.pools.learners])
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
        ray.get([l.save_shard.remote(str(tmp)) for l in self.pools.learners])
        if self.cfg.checkpoint.export_hf:
            ray.get([l.export_hf.remote(str(tmp / "actor")) for l in self.pools.learners])
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
    def _launch_rollout(self, step: int):
        """decode + rollout + reward for the next sampler batch; returns (batch_ref, info) without waiting."""
        import ray

        from .rollout.base import PromptRequest, SamplingSpec

        epoch, idx = self.sampler.next()
        p = self.pools
        recs = [self.records[i] for i in idx]
        video_refs = [p.decode[j % len(p.decode)].decode.remote(r.video) for j, r in enumerate(recs)]
        r = self.cfg.rollout
        spec = SamplingSpec(n=r.n, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                            max_new_tokens=r.max_new_tokens, seed=None if r.seed is None else r.seed * 100003 + step)
        per_engine: list[list[int]] = [[] for _ in p.engines]
        for j in range(len(recs)):
            per_engine[j % len(p.engines)].append(j)
        roll_refs = []
        for e, js in zip(p.engines, per_engine):
            if js:
                reqs = [PromptRequest(key=j, prompt_text=self.prompts[idx[j]]) for j in js]
                roll_refs.append(e.generate.remote(reqs, spec, *[video_refs[j] for j in js]))
        batch_ref = p.reward[step % len(p.reward)].score.remote(
            step, [self.answers[i] for i in idx], [self.prompts[i] for i in idx], video_refs, *roll_refs)
        return batch_ref, {"epoch": epoch, "indices": idx, "video_refs": video_refs, "roll_refs": roll_refs,
                           "t0": time.time()}

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
            if pending is None:
                pending = self._launch_rollout(step)
            batch_ref, info = pending
            pending = None
            ray.get(info["video_refs"], timeout=timeout)
            t_dec = time.time()
            ray.get(info["roll_refs"], timeout=timeout)
            t_roll = time.time()
            batch_metrics = ray.get(batch_ref, timeout=timeout).metrics
            t_rew = time.time()
            lag = self.version - int(batch_metrics["batch/min_weight_version"])
            if lag > cfg.trainer.max_staleness:
                raise RuntimeError(f"step {step}: rollouts sampled with weight version "
                                   f"{int(batch_metrics['batch/min_weight_version'])}, learner at {self.version}: "
                                   f"lag {lag} > trainer.max_staleness={cfg.trainer.max_staleness}")
            learn_refs = [l.train_step.remote(batch_ref) for l in self.pools.learners]
            if cfg.trainer.max_staleness >= 1 and step < self.total_steps:
                pending = self._launch_rollout(step + 1)  # overlaps with learning of this step
            learn = ray.get(learn_refs, timeout=timeout)[0]
            t_learn = time.time()
            self.version += 1
            sync = self.pools.sync_weights(self.version)
            t_sync = time.time()
            self.step = step
            stage = {"decode": t_dec - t0, "rollout": t_roll - t_dec, "reward": t_rew - t_roll,
                     "learn": t_learn - t_rew, "sync": t_sync - t_learn}
            for k, v in stage.items():
                self.timings[k] += v
            rows = batch_metrics["batch/rows"]
            row = {"step": step, "epoch": info["epoch"], "version": self.version, "batch/indices": info["indices"],
                   "rollout/weight_version_lag": lag,
                   **batch_metrics,
                   **{f"learn/{k}": v for k, v in learn.items()}, **sync,
                   **{f"time/{k}": v for k, v in stage.items()}, "time/step": t_sync - t0,
                   "throughput/samples_per_s": rows / max(1e-9, t_sync - t0),
                   "throughput/tokens_per_s": batch_metrics["batch/tokens"] / max(1e-9, t_learn - t_rew)}
            if cfg.data.use_preprocessed:
                row.update(self._cache_stats())
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
        if pending is not None:
            ray.get(pending[0])
        total = sum(self.timings.values()) or 1.0
        shares = {k: v / total for k, v in self.timings.items()}
        print("stage time shares: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in shares.items()))
        return {"last": last, "stage_seconds": self.timings, "stage_shares": shares,
                "wall_s": time.time() - t_start, "log": str(self.logger.path)}

    def _cache_stats(self) -> dict:
        import ray

        st = ray.get([d.stats.remote() for d in self.pools.decode], timeout=self.cfg.trainer.step_timeout_s)
        hits, misses = sum(x["cache_hits"] for x in st), sum(x["cache_misses"] for x in st)
        return {"decode/cache_hits": hits, "decode/cache_misses": misses,
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
    init_ray()
    trainer = Trainer(cfg)
    try:
        out = trainer.run()
        print(json.dumps({"stage_shares": out["stage_shares"], "log": out["log"]}))
    finally:
        trainer.shutdown()
    return 0
