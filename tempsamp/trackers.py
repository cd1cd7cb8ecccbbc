"""Experiment trackers (`trainer.loggers`): one class per tracker, each through its own library's API.

- `jsonl`: `<log_dir>/<run>/steps.jsonl`, one JSON row per step / validation / evaluation, flushed at once.
- `tensorboard`: `torch.utils.tensorboard.SummaryWriter` into `<log_dir>/<run>/tensorboard/`; the config
  as HParams (and as text).
- `wandb`: `wandb.init(dir=<log_dir>/<run>)`; offline with `WANDB_MODE=offline` or `trainer.wandb_mode`;
  the config as the run's config.
- `mlflow`: `MlflowClient` on `trainer.mlflow_tracking_uri`, else `MLFLOW_TRACKING_URI`, else a local
  SQLite store `sqlite:///<log_dir>/mlflow.db` (MLflow's recommended local backend: its `./mlruns`
  file store is in maintenance mode and refuses to start without an opt-out variable); the config as
  run parameters, experiment `trainer.project`, run name `trainer.run_name`.

Every tracker gets the same numeric keys of a row under the same names, at x = the row's `step` — with
one exception MLflow forces: it refuses `@` in a name, so `R1@0.5` is `R1_at_0.5` there. The ids of
the wandb / MLflow runs are kept in `<log_dir>/<run>/trackers.json`, so `tempsamp eval --run` logs the
eval results into the same runs.

The libraries are optional: a logger whose library is missing is refused by `check_config` (and here)
with the key named and the package to install.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from pathlib import Path

from .config import TRACKER_PACKAGES, Config, ConfigError, config_to_dict
from .io import atomic_path

STATE_FILE = "trackers.json"
log = logging.getLogger(__name__)


def flat_params(d: dict, prefix: str = "") -> dict[str, str | int | float | bool]:
    """A nested config as dotted keys (`learner.lr`); lists and None as JSON text."""
    out: dict = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_params(v, key + "."))
        elif isinstance(v, (str, int, float, bool)):
            out[key] = v
        else:
            out[key] = json.dumps(v)
    return out


def numeric(row: dict) -> dict[str, float]:
    """The metrics of a row every tracker gets: its int / float / bool values, `step` excluded."""
    return {k: float(v) for k, v in row.items() if k != "step" and isinstance(v, (int, float))}


def _missing(key: str, e: ImportError) -> ConfigError:
    return ConfigError(f"trainer.loggers: `{key}` needs the {TRACKER_PACKAGES[key]} package "
                       f"(pip install {TRACKER_PACKAGES[key]}; `pip install -e .[dev]` has it): {e}")


class JsonlTracker:
    key = "jsonl"

    def __init__(self, run_dir: Path):
        self.path = run_dir / "steps.jsonl"
        self.f = open(self.path, "a")

    def log(self, row: dict, step: int) -> None:
        self.f.write(json.dumps(row) + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()


class TensorBoardTracker:
    key = "tensorboard"

    def __init__(self, run_dir: Path, params: dict | None):
        try:
            from torch.utils.tensorboard import SummaryWriter
            from torch.utils.tensorboard.summary import hparams
        except ImportError as e:
            raise _missing(self.key, e) from None
        self.dir = run_dir / "tensorboard"
        self.w = SummaryWriter(log_dir=str(self.dir))
        if params:
            flat = flat_params(params)
            # HParams (TensorBoard's run-parameter view) take bool/str/number; the text keeps the whole config
            for summary in hparams(flat, {}):
                self.w.file_writer.add_summary(summary)
            self.w.add_text("config", "\n".join(f"    {k}: {v}" for k, v in sorted(flat.items())))
            self.w.flush()

    def log(self, row: dict, step: int) -> None:
        for k, v in numeric(row).items():
            self.w.add_scalar(k, v, step)
        self.w.flush()

    def close(self) -> None:
        self.w.close()


class WandbTracker:
    key = "wandb"

    def __init__(self, cfg: Config, run_dir: Path, params: dict | None, run_id: str | None):
        try:
            import wandb
        except ImportError as e:
            raise _missing(self.key, e) from None
        t = cfg.trainer
        self.run = wandb.init(project=t.project, name=t.run_name, dir=str(run_dir),
                              config=params if params and not run_id else None, mode=t.wandb_mode or None,
                              id=run_id, resume="allow" if run_id else None, settings=wandb.Settings(console="off"))
        if params and run_id:  # a resumed run: its config now (a changed key takes the new value)
            self.run.config.update(params, allow_val_change=True)
        # x = our step, logged as a metric: a later eval of an earlier checkpoint (or a resumed run)
        # still lands at its step, where wandb's own monotonic _step would drop it
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")
        self.id = self.run.id

    def log(self, row: dict, step: int) -> None:
        self.run.log({"step": step, **numeric(row)})

    def close(self) -> None:
        self.run.finish()


def mlflow_name(key: str) -> str:
    """MLflow accepts only `[/\\w.\\- :]` in a name: `@` becomes `_at_` (R1@0.5 -> R1_at_0.5), anything
    else it refuses becomes `_`."""
    return re.sub(r"[^/\w.\- :]", "_", key.replace("@", "_at_"))


class MlflowTracker:
    key = "mlflow"

    def __init__(self, cfg: Config, run_dir: Path, params: dict | None, run_id: str | None):
        try:
            from mlflow.entities import Param
            from mlflow.tracking import MlflowClient
        except ImportError as e:
            raise _missing(self.key, e) from None
        t = cfg.trainer
        log_dir = Path(t.log_dir).absolute()
        self.uri = t.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{log_dir / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=self.uri)
        if run_id is None:
            exp = self.client.get_experiment_by_name(t.project)
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(
                t.project, artifact_location=(log_dir / "mlartifacts").as_uri() if self.uri.startswith("sqlite:")
                else None)
            run_id = self.client.create_run(exp_id, run_name=t.run_name).info.run_id
        self.id = run_id
        if params:
            # MLflow never changes a logged parameter: a resumed run keeps its first values, adds new keys
            have = self.client.get_run(run_id).data.params
            ps = [Param(mlflow_name(k), str(v)[:6000]) for k, v in flat_params(params).items()]
            changed = [p.key for p in ps if p.key in have and have[p.key] != p.value]
            if changed:
                log.warning("mlflow run %s: parameters %s differ from the run's first values, which MLflow "
                            "keeps", run_id, ", ".join(changed[:10]))
            ps = [p for p in ps if p.key not in have]
            for i in range(0, len(ps), 100):  # MLflow's batch limit for params
                self.client.log_batch(self.id, params=ps[i: i + 100])

    def log(self, row: dict, step: int) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        ms = [Metric(mlflow_name(k), v, ts, step) for k, v in numeric(row).items() if math.isfinite(v)]
        for i in range(0, len(ms), 1000):  # MLflow's batch limit for metrics
            self.client.log_batch(self.id, metrics=ms[i: i + 1000])

    def close(self) -> None:
        self.client.set_terminated(self.id)


class Trackers:
    """The trackers of one run (`trainer.loggers` less `console`, which the caller prints). `params`:
    the config to record as run parameters (None: a later writer, e.g. an eval, that only adds metrics).
    `resume`: continue the wandb / MLflow runs recorded in `<run>/trackers.json` when there are any."""

    def __init__(self, cfg: Config, params: dict | None = None, resume: bool = False,
                 loggers: list[str] | None = None):
        self.dir = Path(cfg.trainer.log_dir) / cfg.trainer.run_name
        self.dir.mkdir(parents=True, exist_ok=True)
        state_path = self.dir / STATE_FILE
        state = json.loads(state_path.read_text()) if resume and state_path.is_file() else {}
        keys = [k for k in (cfg.trainer.loggers if loggers is None else loggers) if k != "console"]
        self.items: list = []
        try:
            for k in keys:
                if k == "jsonl":
                    self.items.append(JsonlTracker(self.dir))
                elif k == "tensorboard":
                    self.items.append(TensorBoardTracker(self.dir, params))
                elif k == "wandb":
                    self.items.append(WandbTracker(cfg, self.dir, params, state.get("wandb", {}).get("id")))
                elif k == "mlflow":
                    self.items.append(MlflowTracker(cfg, self.dir, params, state.get("mlflow", {}).get("run_id")))
                else:
                    raise ConfigError(f"trainer.loggers: unknown logger `{k}`")
        except BaseException:
            self.close()
            raise
        ids = {t.key: {"id": t.id} for t in self.items if t.key == "wandb"}
        ids.update({t.key: {"run_id": t.id, "tracking_uri": t.uri} for t in self.items if t.key == "mlflow"})
        if ids:
            with atomic_path(state_path) as tmp:
                Path(tmp).write_text(json.dumps({**state, **ids}, indent=1))

    def get(self, key: str):
        return next((t for t in self.items if t.key == key), None)

    def log(self, row: dict) -> None:
        step = int(row.get("step", 0))
        for t in self.items:
            t.log(row, step)

    def close(self) -> None:
        """Close every tracker (each one's runs are finished even when another's close fails)."""
        items, self.items, first = self.items, [], None
        for t in items:
            try:
                t.close()
            except Exception as e:  # noqa: PERF203
                first = first or e
        if first is not None:
            raise first


def run_params(cfg: Config) -> dict:
    """What is recorded as a run's parameters: the whole config."""
    return config_to_dict(cfg)
