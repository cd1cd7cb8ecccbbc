"""TimeLens-Bench evaluation: hand-computed metrics, both parse modes, bench errors, resume, and an
end-to-end eval of a checkpoint exported by a real (1-step) training run."""

import json
import shutil
from pathlib import Path

import msgspec
import pytest

from tempsamp.config import load_config
from tempsamp.evaluation.bench import BenchError, load_bench, load_bench_file, parse_dataset_list
from tempsamp.evaluation.metrics import Prediction, dataset_metrics, markdown_table, score_reply
from tempsamp.evaluation.runner import read_predictions, resolve_model_dir

DEMO = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "demo.yaml"


def _pred(text, gt=(0.0, 10.0), duration=30.0, mode="eval", key="k"):
    span, used, iou = score_reply(text, gt, duration, mode)
    return Prediction(key=key, dataset="d", video="v", video_id="v", query="q", gt=gt, duration=duration, text=text,
                      span=span, eval_span=used, iou=iou, parsed=span is not None, parse_mode=mode)


def test_metrics_match_hand_computed_values():
    preds = [
        _pred("<answer> 0 to 10 </answer>"),  # IoU 1.0
        _pred("<answer> 0 to 5 </answer>"),  # IoU exactly 0.5 -> counts for R1@0.5
        _pred("<answer> 5 to 15 </answer>"),  # 5 / 15 = 0.333...
        _pred("<answer> 20 to 25 </answer>"),  # 0
        _pred("no idea"),  # unparsed -> failure span (40, 50): IoU 0, not parsed
    ]
    assert [round(p.iou, 6) for p in preds] == [1.0, 0.5, round(1 / 3, 6), 0.0, 0.0]
    assert preds[4].eval_span == (40.0, 50.0) and not preds[4].parsed
    m = dataset_metrics(preds)
    assert m["R1@0.3"] == pytest.approx(60.0)  # 1.0, 0.5, 0.333
    assert m["R1@0.5"] == pytest.approx(40.0)  # 1.0, 0.5 (boundary included)
    assert m["R1@0.7"] == pytest.approx(20.0)
    assert m["mIoU"] == pytest.approx(100 * (1 + 0.5 + 1 / 3) / 5)
    assert m["parse_rate"] == pytest.approx(80.0) and m["count"] == 5
    table = markdown_table({"charades-timelens": m})
    assert "| charades-timelens | 60.00 | 40.00 | 20.00 | 36.67 | 80.00 | 5 |" in table


def test_parse_modes_differ_where_the_protocols_differ():
    gt, dur = (2.0, 8.0), 20.0
    # eval: first pair, rounded; training: last match, as written
    two = "first 1 to 3, then <answer> 2.6 to 7.4 and 9 to 12 </answer>"
    s_eval, _, _ = score_reply(two, gt, dur, "eval")
    s_train, _, _ = score_reply(two, gt, dur, "training")
    assert s_eval == (3.0, 7.0) and s_train == (9.0, 12.0)
    # rounding changes IoU: 2.6-7.4 -> 3-7
    assert score_reply("<answer> 2.6 to 7.4 </answer>", gt, dur, "eval")[2] == pytest.approx(4 / 6)
    assert score_reply("<answer> 2.6 to 7.4 </answer>", gt, dur, "training")[2] == pytest.approx(4.8 / 6)
    # mm:ss understood by the eval protocol only
    assert score_reply("<answer> 00:02 - 00:08 </answer>", gt, dur, "eval")[0] == (2.0, 8.0)
    # failure spans
    assert score_reply("", gt, dur, "eval")[1] == (30.0, 40.0)
    assert score_reply("", gt, dur, "training")[2] == 0.0
    with pytest.raises(ValueError):
        score_reply("x", gt, dur, "bogus")


def test_dataset_list_forms():
    assert parse_dataset_list("charades, activitynet-timelens qvhighlights-timelens.json") == [
        "charades-timelens", "activitynet-timelens", "qvhighlights-timelens"]
    assert parse_dataset_list(None)[0] == "charades-timelens"
    cfg = load_config(None, [], env={"DATASETS": "charades", "BENCH_DIR": "/b"})
    assert cfg.eval.datasets == ["charades-timelens"] and cfg.eval.bench_dir == "/b"


def test_bench_reads_all_key_variants(synth):
    samples, missing = load_bench(synth["bench_dir"], parse_dataset_list(None))
    assert {s.dataset for s in samples} == {"charades-timelens", "activitynet-timelens", "qvhighlights-timelens"}
    assert all(Path(s.video).is_file() and s.gt[0] <= s.gt[1] for s in samples)
    assert len(samples) == 3 * synth["n_bench"] and not any(missing.values())


def _bench(tmp_path, entry, make_video=True):
    (tmp_path / "video_shards" / "charades").mkdir(parents=True, exist_ok=True)
    if make_video:
        (tmp_path / "video_shards" / "charades" / "v1.mp4").write_bytes(b"x")
    f = tmp_path / "charades-timelens.json"
    f.write_text(json.dumps({"v1": entry}))
    return f


@pytest.mark.parametrize("entry,match", [
    ({"duration": 10, "spans": [[1, 2]]}, r"video 'v1': missing field 'queries'"),
    ({"duration": 10, "queries": ["a"]}, r"video 'v1': missing field 'spans'"),
    ({"queries": ["a"], "spans": [[1, 2]]}, r"missing field 'duration'"),
    ({"duration": 10, "queries": ["a"], "spans": [[[[1, 2]]]]}, r"video 'v1' spans\[0\]: expected a span"),
    ({"duration": 10, "queries": ["a"], "spans": [[5, 2]]}, r"not a finite \[start <= end\]"),
    ({"duration": 10, "queries": ["a", "b"], "spans": [[1, 2]]}, r"equal length"),
])
def test_bad_bench_entries_name_dataset_video_and_field(tmp_path, entry, match):
    f = _bench(tmp_path, entry)
    with pytest.raises(BenchError, match=match) as e:
        load_bench_file(f, "charades-timelens", tmp_path / "video_shards")
    assert "charades-timelens" in str(e.value)


def test_missing_video_is_an_error_or_counted(tmp_path):
    f = _bench(tmp_path, {"duration": 10, "queries": ["a"], "spans": [[1, 2]]}, make_video=False)
    with pytest.raises(BenchError, match=r"video 'v1': video not found .*--skip-missing-videos"):
        load_bench_file(f, "charades-timelens", tmp_path / "video_shards")
    samples, missing = load_bench_file(f, "charades-timelens", tmp_path / "video_shards", skip_missing_videos=True)
    assert samples == [] and missing == ["v1"]


def test_torn_prediction_line_is_dropped_and_bad_line_named(tmp_path):
    p = tmp_path / "predictions.jsonl"
    good = msgspec.json.encode(_pred("<answer> 0 to 5 </answer>", key="a"))
    p.write_bytes(good + b"\n" + good[:20])  # crash mid-write
    assert [x.key for x in read_predictions(p)] == ["a"]
    assert p.read_bytes() == good + b"\n"
    p.write_bytes(b"{not json}\n" + good + b"\n")
    with pytest.raises(BenchError, match=r"predictions.jsonl:1: not a prediction record"):
        read_predictions(p)


def test_processor_comes_from_base_model_when_checkpoint_has_none(tiny_models, tmp_path):
    base = Path(tiny_models("qwen2_5_vl"))
    ck = tmp_path / "actor"
    ck.mkdir()
    for f in base.iterdir():
        if f.suffix in (".safetensors",) or f.name in ("config.json", "generation_config.json"):
            shutil.copy(f, ck / f.name)
    from tempsamp.models.loading import ModelLoadError

    with pytest.raises(ModelLoadError, match="--base-model"):
        resolve_model_dir(str(ck), None, tmp_path / "out")
    view = Path(resolve_model_dir(str(ck), str(base), tmp_path / "out"))
    assert (view / "tokenizer.json").resolve() == (base / "tokenizer.json").resolve()
    assert (view / "config.json").resolve() == (ck / "config.json").resolve()
    assert resolve_model_dir(str(base), None, tmp_path / "out2") == str(base.absolute())


@pytest.mark.slow
@pytest.mark.ray
def test_eval_of_an_exported_checkpoint_end_to_end_and_resume(tiny_models, synth, tmp_path):
    import ray

    from tempsamp.evaluation.runner import run_eval
    from tempsamp.cluster import init_ray
    from tempsamp.trainer import Trainer

    base = tiny_models("qwen2_5_vl")
    ck_root = tmp_path / "ck"
    cfg = load_config(DEMO, [f"data.train_files=[{synth['train_jsonl']}]", "algorithm.name=tempsamp",
                             "trainer.max_steps=1", "trainer.run_name=evtrain", f"trainer.log_dir={tmp_path / 'logs'}",
                             "rollout.backend=hf", "rollout.max_new_tokens=8", "data.prompts_per_step=2",
                             "rollout.n=2", f"checkpoint.output_dir={ck_root}", "checkpoint.save_freq=1",
                             "checkpoint.resume=never", f"eval.bench_dir={synth['bench_dir']}",
                             "eval.max_new_tokens=24", "eval.cpus_per_actor=0.5", "eval.queries_per_call=2",
                             "eval.val_freq=1", "eval.val_max_samples=2", "eval.datasets=[charades-timelens]"],
                      env={})
    init_ray(num_cpus=2)
    try:
        t = Trainer(cfg, model_dir=base)
        t.run()
        t.shutdown()
        val = [json.loads(x) for x in (tmp_path / "logs" / "evtrain" / "steps.jsonl").read_text().splitlines()][-1]
        assert val["step"] == 1 and val["val/charades-timelens/count"] == 2 and "val/charades-timelens/mIoU" in val
        assert (tmp_path / "logs" / "evtrain" / "val" / "step_1" / "results.md").exists()
        actor = ck_root / "global_step_1" / "actor"
        assert (actor / "config.json").exists()
        # strip the processor files: eval must take them from the base model
        for f in actor.iterdir():
            if f.name.startswith(("tokenizer", "chat_template", "preprocessor", "video_preprocessor",
                                  "processor", "special_tokens", "vocab", "merges", "added_tokens")):
                f.unlink()
        out = tmp_path / "eval"
        ds = ["charades-timelens", "qvhighlights-timelens"]
        # placement.use_gpus=auto (the default) on this GPU-less cluster: CPU engines, no "needs 1 GPUs"
        cfg_auto = msgspec.structs.replace(cfg, placement=msgspec.structs.replace(cfg.placement, use_gpus="auto"))
        rep = run_eval(cfg_auto, str(actor), str(out), base_model=base, datasets=ds, progress=False)
        n = 2 * synth["n_bench"]
        assert rep.generated == n and rep.resumed == 0
        lines = [json.loads(x) for x in Path(rep.predictions).read_text().splitlines()]
        assert len(lines) == n and {x["dataset"] for x in lines} == set(ds)
        assert all({"video", "query", "gt", "text", "span", "iou", "parsed"} <= set(x) for x in lines)
        m = json.loads(Path(rep.metrics_json).read_text())
        assert m["parse_mode"] == "eval" and set(m["datasets"]) == set(ds)
        assert all(m["datasets"][d]["count"] == synth["n_bench"] for d in ds)
        table = Path(rep.table_md).read_text()
        assert "| charades-timelens |" in table and "R1@0.5" in table
        # per-dataset plots, linked from results.md
        for d in ds:
            for k in ("iou_histogram", "r1_vs_iou", "timeline"):
                png = out / "plots" / f"{d}_{k}.png"
                assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"](plots/{d}_{k}.png)" in table
        # `tempsamp eval --run`: the results also go into the training run's trackers (here steps.jsonl),
        # at the checkpoint's step; nothing is regenerated
        from tempsamp.cli import main as cli

        assert cli(["eval", "--model", str(actor), "--base-model", base, "--bench-dir", synth["bench_dir"],
                    "--datasets", ",".join(ds), "--output", str(out), "--run", "evtrain", "--config", str(DEMO),
                    f"trainer.log_dir={tmp_path / 'logs'}", "eval.cpus_per_actor=0.5"]) == 0
        last = json.loads((tmp_path / "logs" / "evtrain" / "steps.jsonl").read_text().splitlines()[-1])
        assert last["step"] == 1 and last["eval/charades-timelens/count"] == synth["n_bench"]
        assert last["eval/qvhighlights-timelens/mIoU"] == m["datasets"]["qvhighlights-timelens"]["mIoU"]
        # rerun: nothing regenerated; a lost line is regenerated; a new parse mode rescored from stored text
        p = Path(rep.predictions)
        p.write_text("".join(x + "\n" for x in p.read_text().splitlines()[:-1]))
        rep2 = run_eval(cfg, str(actor), str(out), base_model=base, datasets=ds, progress=False)
        assert rep2.generated == 1 and rep2.resumed == n - 1
        cfg_t = msgspec.structs.replace(cfg, eval=msgspec.structs.replace(cfg.eval, parse_mode="training"))
        rep3 = run_eval(cfg_t, str(actor), str(out), base_model=base, datasets=ds, progress=False)
        assert rep3.generated == 0 and json.loads(Path(rep3.metrics_json).read_text())["parse_mode"] == "training"
        assert all(json.loads(x)["parse_mode"] == "training" for x in p.read_text().splitlines())
        # a corrected annotation in the bench file: the stored prediction is rescored against it, counted
        bench2 = tmp_path / "bench2"
        bench2.mkdir()
        (bench2 / "video_shards").symlink_to(Path(synth["bench_dir"]) / "video_shards")
        for d in ds:
            data = json.loads((Path(synth["bench_dir"]) / f"{d}.json").read_text())
            if d == "charades-timelens":
                vid = sorted(data)[0]
                spans = data[vid].get("spans", data[vid].get("timestamps"))
                spans[0] = [0.0, float(data[vid]["duration"])]  # the whole video
                fixed = f"{d}/{vid}/0"
            (bench2 / f"{d}.json").write_text(json.dumps(data))
        cfg_b = msgspec.structs.replace(cfg_t, eval=msgspec.structs.replace(cfg_t.eval, bench_dir=str(bench2)))
        rep4 = run_eval(cfg_b, str(actor), str(out), base_model=base, datasets=ds, progress=False)
        assert rep4.generated == 0 and rep4.gt_changed == 1
        assert json.loads(Path(rep4.metrics_json).read_text())["gt_changed"] == 1
        stored = {json.loads(x)["key"]: json.loads(x) for x in p.read_text().splitlines()}
        assert stored[fixed]["gt"][0] == 0.0 and stored[fixed]["gt"][1] == stored[fixed]["duration"]
        assert run_eval(cfg_b, str(actor), str(out), base_model=base, datasets=ds, progress=False).gt_changed == 0
    finally:
        ray.shutdown()
