"""Evaluation protocol pieces without Ray: per-family video budgets, rescoring against the bench's
current ground truth, GPU use decided from the cluster, and run comparison."""

import json
from pathlib import Path

import msgspec
import pytest

from tempsamp.config import load_config
from tempsamp.evaluation.bench import BenchSample
from tempsamp.evaluation.metrics import Prediction, score_reply
from tempsamp.evaluation.runner import eval_video_params, refresh_predictions, write_outputs


@pytest.mark.parametrize("family,d", [("qwen2_5_vl", 28), ("qwen3_vl", 32), ("qwen3_5", 32)])
def test_eval_budgets_are_the_originals_token_budgets_in_pixels_of_the_family(family, d):
    p = eval_video_params(load_config(env={}), family)
    assert (p.min_pixels, p.max_pixels, p.total_pixels) == (64 * d * d, 768 * d * d, 14336 * d * d)
    assert p.fps == 2.0 and p.max_frames == 0 and p.image_factor == d
    if family == "qwen2_5_vl":
        assert (p.min_pixels, p.total_pixels) == (50_176, 11_239_424)  # RECIPE.md's numbers
    else:
        assert (p.min_pixels, p.total_pixels) == (65_536, 14_680_064)
    own = eval_video_params(load_config(overrides=["eval.min_pixels=3136", "eval.total_pixels=200704"], env={}), family)
    assert (own.min_pixels, own.total_pixels, own.max_pixels) == (3136, 200704, 768 * d * d)


def _pred(key, text, gt, duration=30.0, mode="eval"):
    span, used, iou = score_reply(text, gt, duration, mode)
    ds, vid, _ = key.split("/")
    return Prediction(key=key, dataset=ds, video=f"/v/{vid}.mp4", video_id=vid, query="q", gt=gt, duration=duration,
                      text=text, span=span, eval_span=used, iou=iou, parsed=span is not None, parse_mode=mode)


def _sample(key, gt, duration=30.0):
    ds, vid, qi = key.split("/")
    return BenchSample(dataset=ds, video_id=vid, query_index=int(qi), query="q", gt=gt, duration=duration,
                       video=f"/v/{vid}.mp4")


def test_stored_predictions_are_rescored_against_the_bench_as_it_is_now(tmp_path):
    a = _pred("charades-timelens/v1/0", "<answer> 2 to 8 </answer>", (2.0, 8.0))
    b = _pred("charades-timelens/v2/0", "<answer> 2 to 8 </answer>", (2.0, 8.0))
    assert a.iou == 1.0
    truth = {"charades-timelens/v1/0": _sample("charades-timelens/v1/0", (2.0, 14.0)),  # corrected annotation
             "charades-timelens/v2/0": _sample("charades-timelens/v2/0", (2.0, 8.0))}
    out, changed = refresh_predictions([a, b], truth, "eval")
    assert changed == {"charades-timelens/v1/0"}
    assert out[0].gt == (2.0, 14.0) and out[0].iou == pytest.approx(0.5) and out[1] is b
    # the duration alone changing also counts (the failure span depends on it)
    out, changed = refresh_predictions([b], {b.key: _sample(b.key, (2.0, 8.0), duration=60.0)}, "eval")
    assert changed == {b.key} and out[0].duration == 60.0
    m, pj, mj, _ = write_outputs([a, b], {a.key, b.key}, ["charades-timelens"], tmp_path, "eval", {"model": "x"},
                                 truth=truth)
    meta = json.loads(mj.read_text())
    assert meta["gt_changed"] == 1 and m["charades-timelens"]["mIoU"] == pytest.approx(75.0)
    assert json.loads(pj.read_text().splitlines()[0])["gt"] == [2.0, 14.0]


def test_use_gpus_auto_follows_the_cluster_and_explicit_values_win():
    from tempsamp.placement.plan import make_serving_plan, resolve_use_gpus

    notes = []
    cfg = load_config(env={})
    assert cfg.placement.use_gpus == "auto"
    cpu = resolve_use_gpus(cfg, {"CPU": 2.0}, notes.append)
    assert cpu.placement.use_gpus is False and len(notes) == 1 and "no GPUs" in notes[0]
    assert resolve_use_gpus(cfg, {"CPU": 2.0, "GPU": 8.0}, notes.append).placement.use_gpus is True
    assert resolve_use_gpus(cfg, None, notes.append).placement.use_gpus is True  # no cluster: the planned shape
    explicit = load_config(overrides=["placement.use_gpus=true"], env={})
    assert resolve_use_gpus(explicit, {"CPU": 2.0}, notes.append).placement.use_gpus is True
    assert len(notes) == 1
    # what eval plans on a CPU-only cluster fits; an explicit GPU ask names the keys and the fix
    assert make_serving_plan(1, 0, 1.0, 1, {"CPU": 2.0}, "eval.num_engines", "eval.num_decoders").roles["rollout"].gpus == 0
    from tempsamp.placement.plan import PlacementError

    with pytest.raises(PlacementError, match=r"role `rollout` needs 1 GPUs.*sized by eval.num_engines.*use_gpus=false"):
        make_serving_plan(1, 1, 1.0, 1, {"CPU": 2.0}, "eval.num_engines", "eval.num_decoders")


def test_reframe_backend_auto_follows_the_cluster():
    from tempsamp.reframe.runner import ReframeOptions, resolve_backend

    notes = []
    cpu = resolve_backend(ReframeOptions(), {"CPU": 2.0}, notes.append)
    assert (cpu.backend, cpu.gpus_per_engine) == ("hf", 0.0) and len(notes) == 1
    gpu = resolve_backend(ReframeOptions(), {"GPU": 1.0}, notes.append)
    assert (gpu.backend, gpu.gpus_per_engine) == ("vllm", 1.0)
    assert resolve_backend(ReframeOptions(backend="hf"), {"GPU": 1.0}).gpus_per_engine == 0.0


def _run_dir(tmp_path, name, replies):
    d = tmp_path / name
    d.mkdir()
    preds = [_pred(k, t, gt) for k, (t, gt) in replies.items()]
    write_outputs(preds, set(replies), ["charades-timelens", "activitynet-timelens"], d, "eval", {"model": name})
    return d


def test_eval_compare_puts_metrics_side_by_side_with_per_query_win_tie_loss(tmp_path, capsys):
    from tempsamp.cli import main
    from tempsamp.evaluation.compare import compare_runs, comparison_table

    gt = (10.0, 20.0)
    a = _run_dir(tmp_path, "a", {"charades-timelens/v1/0": ("10 to 20", gt), "charades-timelens/v2/0": ("0 to 5", gt),
                                 "charades-timelens/v3/0": ("10 to 15", gt), "activitynet-timelens/w/0": ("10 to 20", gt)})
    b = _run_dir(tmp_path, "b", {"charades-timelens/v1/0": ("10 to 20", gt), "charades-timelens/v2/0": ("10 to 20", gt),
                                 "charades-timelens/v3/0": ("0 to 5", gt)})  # B has no activitynet answer
    cmp = compare_runs(a, b)
    ch = cmp["datasets"]["charades-timelens"]
    assert (ch["common"], ch["win"], ch["tie"], ch["loss"]) == (3, 1, 1, 1)
    assert ch["mean_delta_iou"] == pytest.approx((1.0 - 0.5) / 3)
    assert ch["a"]["mIoU"] == pytest.approx(50.0) and ch["b"]["mIoU"] == pytest.approx(200 / 3)
    assert cmp["datasets"]["activitynet-timelens"]["common"] == 0
    table = comparison_table(cmp, "base", "tuned")
    assert "| charades-timelens | " in table and "(+16.67)" in table and "| 3 | 1 / 1 / 1 |" in table
    assert main(["eval-compare", str(a), str(b), "--labels", "base", "tuned"]) == 0
    assert "tuned win / tie / loss" in capsys.readouterr().out
    assert main(["eval-compare", str(a), str(tmp_path / "nope")]) != 0
