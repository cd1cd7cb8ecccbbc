"""trainer.loggers: the step log reaches TensorBoard, wandb (offline) and MLflow through their own
libraries, and each run is read back with that library's own reader. In-process: StepLogger is fed
rows directly (no training run)."""

import json
import math

import pytest

from tempsamp.config import ConfigError, load_config

ALL = "[console,jsonl,tensorboard,wandb,mlflow]"


def _row(step: int) -> dict:
    return {"step": step, "epoch": 0, "version": step, "batch/indices": [0, 1], "sample/text": "<t>1 to 2</t>",
            "reward/raw_score_mean_no_gt": 0.1 * step, "reward/score_mean_no_gt": 0.2 * step,
            "reward/score_mean": 0.3 * step, "reward/iou_mean_no_gt": 0.05 * step,
            "reward/format_rate_no_gt": 0.5, "learn/gt_logp_per_token": -3.0 + step, "time/step": 1.5,
            "learn/grad_norm": float("nan") if step == 2 else 1.0}


VAL = {"step": 2, "val/seconds": 4.0, "val/charades-timelens/R1@0.5": 12.5, "val/charades-timelens/mIoU": 20.0}


def _wandb_records(run_dir):
    """Every record of the wandb offline runs under `run_dir`, read with wandb's own datastore reader
    and protobuf schema, oldest run first."""
    from wandb.proto import wandb_internal_pb2 as pb
    from wandb.sdk.internal import datastore

    files = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert files, f"no offline wandb run under {run_dir}"
    runs = []
    for f in files:
        ds = datastore.DataStore()
        ds.open_for_scan(str(f))
        recs = []
        while (data := ds.scan_data()) is not None:
            r = pb.Record()
            r.ParseFromString(data)
            recs.append(r)
        runs.append(recs)
    return runs


def _wandb_history(recs) -> list[dict]:
    out = []
    for r in recs:
        if r.WhichOneof("record_type") == "history":
            out.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item})
    return out


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """Three steps + a validation row through every logger, then an eval of the step-3 checkpoint logged
    into the same runs (as `tempsamp eval --run` does)."""
    from tempsamp.evaluation.runner import log_eval_results
    from tempsamp.steplog import StepLogger

    d = tmp_path_factory.mktemp("trackers")
    cfg = load_config(None, [f"trainer.log_dir={d}", "trainer.run_name=r1", f"trainer.loggers={ALL}",
                             "trainer.wandb_mode=offline", "learner.lr=0.25"], env={})
    sl = StepLogger(cfg, total_steps=3)
    for s in (1, 2):
        sl.write(_row(s))
    sl.write(VAL)
    sl.write(_row(3))
    sl.close()
    metrics = {"charades-timelens": {"R1@0.3": 50.0, "R1@0.5": 25.0, "R1@0.7": 10.0, "mIoU": 30.0,
                                      "parse_rate": 100.0, "count": 4}}
    log_eval_results(cfg, metrics, step=3)
    return cfg, d / "r1"


def _numeric(row):
    return {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))}


def test_tensorboard_run_reads_back(logged):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    cfg, run = logged
    ea = EventAccumulator(str(run / "tensorboard"))
    ea.Reload()
    scalars = set(ea.Tags()["scalars"])
    assert set(_numeric(_row(1))) | set(_numeric(VAL)) | {"eval/charades-timelens/R1@0.5"} <= scalars
    assert [(e.step, round(e.value, 6)) for e in ea.Scalars("reward/iou_mean_no_gt")] == [(1, 0.05), (2, 0.1), (3, 0.15)]
    assert [(e.step, e.value) for e in ea.Scalars("val/charades-timelens/R1@0.5")] == [(2, 12.5)]
    assert [(e.step, e.value) for e in ea.Scalars("eval/charades-timelens/mIoU")] == [(3, 30.0)]
    assert math.isnan(ea.Scalars("learn/grad_norm")[1].value)
    # the config as TensorBoard HParams (the run-parameter view)
    content = ea.PluginTagToContent("hparams")
    info = next(plugin_data_pb2.HParamsPluginData.FromString(c) for c in content.values()
                if plugin_data_pb2.HParamsPluginData.FromString(c).HasField("session_start_info"))
    hp = info.session_start_info.hparams
    assert hp["learner.lr"].number_value == 0.25 and hp["trainer.run_name"].string_value == "r1"
    assert json.loads(hp["trainer.loggers"].string_value) == json.loads(json.dumps(list(cfg.trainer.loggers)))


def test_wandb_offline_run_reads_back(logged):
    cfg, run = logged
    train, ev = _wandb_records(run)  # the training run and the eval's resumed run (same id)
    first = next(r.run for r in train if r.WhichOneof("record_type") == "run")
    assert first.display_name == "r1" and first.project == "tempsamp"
    config = {u.key: json.loads(u.value_json) for u in first.config.update}  # the config the run started with
    config.update({u.key: json.loads(u.value_json) for r in train if r.WhichOneof("record_type") == "config"
                   for u in r.config.update})
    assert config["learner"]["lr"] == 0.25 and config["trainer"]["run_name"] == "r1"
    hist = _wandb_history(train)
    steps = [h for h in hist if "reward/iou_mean_no_gt" in h]
    assert [(h["step"], round(h["reward/iou_mean_no_gt"], 6)) for h in steps] == [(1, 0.05), (2, 0.1), (3, 0.15)]
    assert set(_numeric(_row(1))) <= set(steps[0])
    assert [(h["step"], h["val/charades-timelens/R1@0.5"]) for h in hist if "val/seconds" in h] == [(2, 12.5)]
    assert next(r.run for r in ev if r.WhichOneof("record_type") == "run").run_id == first.run_id
    assert [(h["step"], h["eval/charades-timelens/R1@0.5"]) for h in _wandb_history(ev)] == [(3, 25.0)]
    state = json.loads((run / "trackers.json").read_text())
    assert state["wandb"]["id"] == first.run_id


def test_mlflow_run_reads_back(logged):
    from mlflow.tracking import MlflowClient

    cfg, run = logged
    state = json.loads((run / "trackers.json").read_text())["mlflow"]
    assert state["tracking_uri"] == f"sqlite:///{run.parent / 'mlflow.db'}"  # local, under trainer.log_dir
    c = MlflowClient(tracking_uri=state["tracking_uri"])
    exp = c.get_experiment_by_name("tempsamp")
    (r,) = c.search_runs([exp.experiment_id], filter_string="attributes.run_name = 'r1'")
    assert r.info.run_id == state["run_id"] and r.info.status == "FINISHED"
    assert r.data.params["learner.lr"] == "0.25" and r.data.params["trainer.run_name"] == "r1"
    hist = c.get_metric_history(r.info.run_id, "reward/iou_mean_no_gt")
    assert [(m.step, round(m.value, 6)) for m in hist] == [(1, 0.05), (2, 0.1), (3, 0.15)]
    assert set(r.data.metrics) >= {k.replace("@", "_at_") for k in _numeric(_row(1)) | _numeric(VAL)}
    assert [(m.step, m.value) for m in c.get_metric_history(r.info.run_id, "val/charades-timelens/R1_at_0.5")] \
        == [(2, 12.5)]
    assert [(m.step, m.value) for m in c.get_metric_history(r.info.run_id, "eval/charades-timelens/mIoU")] \
        == [(3, 30.0)]


def test_jsonl_has_steps_validation_and_eval(logged):
    cfg, run = logged
    rows = [json.loads(x) for x in (run / "steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 2, 3, 3] and rows[2] == VAL
    assert rows[-1] == {"step": 3, **{f"eval/charades-timelens/{k}": v for k, v in
                                      {"R1@0.3": 50.0, "R1@0.5": 25.0, "R1@0.7": 10.0, "mIoU": 30.0,
                                       "parse_rate": 100.0, "count": 4}.items()}}


def test_console_only_and_bad_logger_keys(tmp_path, capsys):
    from tempsamp.steplog import StepLogger

    cfg = load_config(None, [f"trainer.log_dir={tmp_path}", "trainer.run_name=c", "trainer.loggers=[console]"], env={})
    sl = StepLogger(cfg, total_steps=2)
    sl.write(_row(1))
    sl.close()
    assert capsys.readouterr().out.startswith("[c] step 1/2 score 0.100")
    assert not (tmp_path / "c" / "steps.jsonl").exists()
    with pytest.raises(ConfigError, match=r"Invalid enum value 'neptune' - at `trainer.loggers\[1\]`"):
        load_config(None, ["trainer.loggers=[console,neptune]"], env={})
    with pytest.raises(ConfigError, match="trainer.loggers lists jsonl more than once"):
        load_config(None, ["trainer.loggers=[jsonl,jsonl]"], env={})


def test_missing_library_names_the_logger_key(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"trainer.loggers: `wandb` needs the wandb package.*pip install wandb"):
        load_config(None, ["trainer.loggers=[console,wandb]"], env={})
