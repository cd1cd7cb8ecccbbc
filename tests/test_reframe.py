"""Highlight Video Re-framing kit: exact geometry, parsers, the validator against crafted bad
submissions, and both baselines end to end on synthetic videos with a moving subject."""

import json
from pathlib import Path

import pytest

from tempsamp.reframe.baselines import (boxes_for_clips, center_predictions, keyframes, parse_center,
                                        parse_segments, segments_to_frames)
from tempsamp.reframe.geometry import crop_size, interpolate_centres, place_box
from tempsamp.reframe.submission import ReframeError, read_index, validate


@pytest.mark.parametrize("ratio", [(16, 9), (9, 16)])
def test_crop_is_the_largest_box_of_the_ratio_and_never_leaves_the_frame(ratio):
    for width in range(64, 2000, 37):
        for height in (360, 480, 540, 720, 1080, 1920, 1081, 333):
            w, h = crop_size(width, height, ratio)
            assert 0 < w <= width and 0 < h <= height
            assert h == w * ratio[1] // ratio[0]
            # the original's rule: full width when the frame is narrower than the ratio, else floor(H * tw / th)
            assert w == min(width, height * ratio[0] // ratio[1])
    assert crop_size(1920, 1080, (16, 9)) == (1920, 1080)
    assert crop_size(1920, 1080, (9, 16)) == (607, 1079)
    assert crop_size(640, 360, (9, 16)) == (202, 359)


def test_box_placement_and_interpolation():
    assert place_box(0, 0, 640, 360, 202, 359) == (0, 0)
    assert place_box(640, 360, 640, 360, 202, 359) == (438, 1)
    assert place_box(320, 180, 640, 360, 202, 359) == (219, 0)
    c = interpolate_centres({10: (100.0, 50.0), 20: (200.0, 150.0)}, [0, 10, 15, 20, 30])
    assert c == {0: (100.0, 50.0), 10: (100.0, 50.0), 15: (150.0, 100.0), 20: (200.0, 150.0), 30: (200.0, 150.0)}


def test_parsers_and_frame_planning():
    assert parse_segments('Sure! {"segments": [[2.5, 4.0]]}') == [(2.5, 4.0)]
    assert parse_segments('segments: [4, 2.5] and [7,8]') == [(2.5, 4.0), (7.0, 8.0)]  # fallback, swapped
    assert parse_segments("no idea") == [] and parse_segments("") == []
    assert segments_to_frames([(1.0, 2.0), (1.5, 3.0), (99.0, 120.0)], fps=25, n_frames=100) == [(25, 75), (99, 99)]
    assert keyframes([(0, 40)]) == [0, 15, 30, 40] and keyframes([(5, 5)]) == [5]
    assert parse_center('{"center": [500, 250]}', 640, 360) == (320.0, 90.0)  # 0-1000 scale
    assert parse_center('{"center": [0.5, 0.5]}', 640, 360) == (320.0, 180.0)  # 0-1
    assert parse_center('{"center": [1200, 300]}', 1280, 720) == (1200.0, 300.0)  # pixels
    assert parse_center('center at [5000, 5000]', 640, 360) is None
    assert parse_center("{]", 640, 360) is None
    boxes = boxes_for_clips([(0, 4)], {0: (0.0, 180.0), 4: (640.0, 180.0)}, 640, 360, (9, 16))
    assert [b["frame"] for b in boxes] == [0, 1, 2, 3, 4]
    xs = [b["bboxes"][0] for b in boxes]
    assert xs == sorted(xs) and xs[0] == 0 and xs[-1] == 640 - 202  # follows the subject, clamped
    assert boxes_for_clips([(0, 2)], {}, 640, 360, (16, 9)) == center_predictions(3, 640, 360, (16, 9))


def _videos(tmp_path):
    from tempsamp.data.synthetic import SynthVideo, write_video

    vdir = tmp_path / "video"
    vdir.mkdir()
    specs = [("0", 320, 180, 25, (16, 9)), ("1", 180, 320, 30, (9, 16)), ("2", 256, 144, 60, (9, 16)),
             ("3", 200, 200, 24, (16, 9))]
    for vid, w, h, fps, _ in specs[:3]:
        write_video(SynthVideo(video_id=vid, path=str(vdir / f"{vid}.mp4"), duration=2.0, fps=fps, width=w,
                               height=h, start=0.2, end=1.8, query="q"), (230, 40, 40), "square", int(vid))
    index = tmp_path / "test_index.json"  # video 3 is in the index but missing on disk
    index.write_text(json.dumps([{"video_id": v, "targetRatioWH": list(r)} for v, *_, r in specs]))
    return index, vdir


def test_validator_rejects_crafted_bad_submissions(tmp_path):
    index, vdir = _videos(tmp_path)
    idx = read_index(index)
    good = {"0": center_predictions(50, 320, 180, (16, 9), 10), "1": center_predictions(60, 180, 320, (9, 16), 10),
            "2": center_predictions(120, 256, 144, (9, 16), 10), "3": []}

    def check(mutate):
        lines = {v: {"video_id": v, "targetRatioWH": [e.targetRatioWH[0], e.targetRatioWH[1]],
                     "predictions": json.loads(json.dumps(good[v]))} for v, e in ((e.video_id, e) for e in idx)}
        out = mutate(lines)
        p = tmp_path / "sub.jsonl"
        p.write_text("".join(json.dumps(x) + "\n" for x in (out if isinstance(out, list) else lines.values())))
        return validate(idx, p, vdir)

    errors, summary = check(lambda L: None)
    assert errors == [] and summary["boxes"] == 5 + 6 + 12 and summary["videos_with_boxes"] == 3
    cases = {
        "has no line": lambda L: [L["0"], L["1"], L["2"]],
        "appears again": lambda L: list(L.values()) + [L["0"]],
        "!= index": lambda L: L["1"].update(targetRatioWH=[16, 9]),
        "outside 0..49": lambda L: L["0"]["predictions"].append({"frame": 50, "bboxes": [0, 0, 320]}),
        "repeated": lambda L: L["0"]["predictions"].append(dict(L["0"]["predictions"][0])),
        "box width 100 != 180": lambda L: L["1"]["predictions"][0].update(bboxes=[0, 0, 100]),
        "leaves the 256x144 frame": lambda L: L["2"]["predictions"][0].update(bboxes=[200, 0, 81]),
        "must be [x, y, w] integers": lambda L: L["0"]["predictions"][0].update(bboxes=[0.5, 0, 320]),
        "not in the index": lambda L: list(L.values()) + [{"video_id": "9", "targetRatioWH": [16, 9], "predictions": []}],
    }
    for needle, mutate in cases.items():
        errors, _ = check(mutate)
        assert any(needle in e for e in errors), (needle, errors)
    (tmp_path / "bad_index.json").write_text(json.dumps([{"video_id": "0", "targetRatioWH": [4, 3]}]))
    with pytest.raises(ReframeError, match=r"entry 0 \(video 0\): targetRatioWH \[4, 3\]"):
        read_index(tmp_path / "bad_index.json")


@pytest.mark.slow
@pytest.mark.ray
def test_both_baselines_end_to_end_pass_the_validator(tiny_models, tmp_path):
    import ray

    from tempsamp.reframe.preview import contact_sheet
    from tempsamp.reframe.runner import ReframeOptions, run_reframe
    from tempsamp.cluster import init_ray

    index, vdir = _videos(tmp_path)
    idx = read_index(index)
    init_ray(num_cpus=2)
    try:
        out = tmp_path / "center.jsonl"
        rep = run_reframe(idx, str(vdir), str(out), ReframeOptions(method="center", frame_stride=5, progress=False))
        assert rep["ran"] == 4 and rep["missing"] == 1
        errors, summary = validate(idx, out, vdir)
        assert errors == [] and summary["videos_with_boxes"] == 3
        rep = run_reframe(idx, str(vdir), str(out), ReframeOptions(method="center", progress=False))
        assert rep["ran"] == 0 and rep["resumed"] == 4  # resumable
        out = tmp_path / "qwen.jsonl"
        opts = ReframeOptions(method="qwen", model=tiny_models("qwen2_5_vl"), max_new_tokens=16, progress=False,
                              stage1_fps=2.0, max_pixels=128 * 128)
        rep = run_reframe(idx, str(vdir), str(out), opts)
        errors, summary = validate(idx, out, vdir)
        assert errors == [], errors[:5]
        assert summary["videos_with_boxes"] == 3  # random model: no clip parsed -> whole video, centred boxes
        raw = [json.loads(x) for x in Path(str(out) + ".raw.jsonl").read_text().splitlines()]
        assert {r["video_id"] for r in raw} == {"0", "1", "2", "3"}
        assert all("stage1" in r and "stage2" in r for r in raw if r["video_id"] != "3")
        line = next(json.loads(x) for x in out.read_text().splitlines() if json.loads(x)["video_id"] == "1")
        png = contact_sheet(vdir / "1.mp4", line["predictions"], (9, 16), tmp_path / "sheet.png")
        assert png.stat().st_size > 1000
    finally:
        ray.shutdown()
