"""Figures: per-dataset eval plots linked from results.md, and `tempsamp plot` training curves for any
runs. Pure (no Ray): predictions and step rows are made here."""

import json
import re

import pytest

from tempsamp.cli import main as cli
from tempsamp.evaluation.metrics import Prediction, score_reply
from tempsamp.evaluation.runner import write_outputs


def _pred(ds, vid, text, gt, duration=30.0):
    span, used, iou = score_reply(text, gt, duration, "eval")
    return Prediction(key=f"{ds}/{vid}/0", dataset=ds, video=f"/v/{vid}.mp4", video_id=vid, query=f"person opens {vid}",
                      gt=gt, duration=duration, text=text, span=span, eval_span=used, iou=iou, parsed=span is not None,
                      parse_mode="eval")


def _png_ok(path) -> tuple[int, int]:
    from PIL import Image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size


def test_eval_writes_per_dataset_plots_linked_from_results_md(tmp_path):
    preds = [_pred("charades-timelens", f"v{i}", f"<answer> {i} to {i + 6} </answer>", (2.0, 8.0)) for i in range(16)]
    preds += [_pred("charades-timelens", "nope", "I cannot tell", (3.0, 9.0)),  # unparsed: "no answer"
              _pred("charades-timelens", "late", "<answer> 40 to 50 </answer>", (3.0, 9.0)),  # outside the video
              _pred("activitynet-timelens", "a1", "<answer> 10 to 20 </answer>", (12.0, 20.0), duration=120.0)]
    metrics, _, _, md = write_outputs(preds, {p.key for p in preds},
                                      ["charades-timelens", "activitynet-timelens", "youcook2-timelens"], tmp_path,
                                      "eval", {"model": "m"}, plots=True)
    text = md.read_text()
    links = re.findall(r"!\[([^\]]+)\]\(([^)]+)\)", text)
    want = {f"plots/{ds}_{k}.png" for ds in ("charades-timelens", "activitynet-timelens")
            for k in ("iou_histogram", "r1_vs_iou", "timeline")}
    assert {p for _, p in links} == want  # youcook2 has no predictions: no plots
    for _, rel in links:
        w, h = _png_ok(tmp_path / rel)
        assert w > 300 and h > 200
    # the timeline shows at most 12 queries: its height grows with the rows shown
    assert _png_ok(tmp_path / "plots/charades-timelens_timeline.png")[1] > \
        _png_ok(tmp_path / "plots/activitynet-timelens_timeline.png")[1]
    assert "| charades-timelens |" in text and text.index("### Plots") > text.index("| charades-timelens |")
    # without plots=True (in-training validation), no figures
    d2 = tmp_path / "noplots"
    d2.mkdir()
    write_outputs(preds, {p.key for p in preds}, ["charades-timelens"], d2, "eval", {"model": "m"})
    assert not (d2 / "plots").exists() and "![" not in (d2 / "results.md").read_text()


def _steps(d, run, n, scale):
    (d / run).mkdir(parents=True)
    rows = [{"step": s, "reward/raw_score_mean_no_gt": scale * s, "reward/iou_mean_no_gt": scale * s / 2,
             "reward/format_rate_no_gt": min(1.0, scale * s), "learn/gt_logp_per_token": -5 + s, "time/step": 2.0}
            for s in range(1, n + 1)]
    rows.append({"step": n, "val/seconds": 3.0, "val/charades-timelens/mIoU": 12.0})
    (d / run / "steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d / run


def test_plot_command_draws_curves_of_several_runs(tmp_path, capsys):
    a, b = _steps(tmp_path / "logs", "grpo", 5, 0.05), _steps(tmp_path / "logs", "tempsamp", 7, 0.1)
    assert cli(["plot", "--run", str(a), "--run", str(b / "steps.jsonl")]) == 0
    out = tmp_path / "logs" / "curves.png"
    assert capsys.readouterr().out.strip() == f"plot: {out}"
    w4, _ = _png_ok(out)
    # one run, chosen keys (a validation metric too): one panel per key, next to the run by default
    assert cli(["plot", "--run", str(a), "--keys", "reward/iou_mean_no_gt,val/charades-timelens/mIoU"]) == 0
    w2, _ = _png_ok(a / "curves.png")
    assert w4 > w2  # 4 panels are wider than 2
    # clear errors: a folder without steps.jsonl, a bad line, keys no run has
    assert cli(["plot", "--run", str(tmp_path / "none")]) == 2
    assert f"{tmp_path / 'none' / 'steps.jsonl'}: no steps.jsonl" in capsys.readouterr().err
    (a / "steps.jsonl").write_text('{"step": 1}\nnot json\n')
    assert cli(["plot", "--run", str(a)]) == 2
    assert f"{a / 'steps.jsonl'}:2: not a JSON row" in capsys.readouterr().err
    assert cli(["plot", "--run", str(b), "--keys", "nothing/here"]) == 2
    assert "none of the metrics to plot is in these runs (tempsamp)" in capsys.readouterr().err


@pytest.mark.parametrize("n", [1, 40])
def test_timeline_sample_is_spread_over_the_dataset(tmp_path, n):
    from tempsamp.plots import eval_plots

    preds = [_pred("charades-timelens", f"v{i:02d}", "<answer> 1 to 4 </answer>", (1.0, 4.0)) for i in range(n)]
    pngs = eval_plots(preds, "charades-timelens", tmp_path, sample=12)
    assert set(pngs) == {"iou_histogram", "r1_vs_iou", "timeline"} and all(_png_ok(p) for p in pngs.values())
