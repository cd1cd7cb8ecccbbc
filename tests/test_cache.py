import json
import re

import numpy as np
import pytest

from tempsamp.cli import main as cli
from tempsamp.data.cache import (CacheMismatchError, CacheMissError, VideoSource, build_cache, entry_path,
                                 read_entry)
from tempsamp.data.records import read_records
from tempsamp.data.video import VideoParams, decode_video

P = VideoParams(fps=1.0, max_frames=8, min_pixels=3136, max_pixels=6272, patch_size=14)


def test_build_load_and_hit(synth, tmp_path):
    cache = tmp_path / "cache"
    out = tmp_path / "cached.jsonl"
    rep = build_cache(synth["train_jsonl"], str(cache), str(out), P, workers=2, progress=False)
    assert rep.built == rep.total == 8 and rep.failed == 0
    assert len(read_records(out)[0]) == 8
    rec = read_records(out)[0][0]
    got = read_entry(cache, rec.video, P)
    ref = decode_video(rec.video, P)
    assert got.from_cache and np.array_equal(got.frames, ref.frames)
    assert got.meta.frame_indices == ref.meta.frame_indices
    # second build reuses
    assert build_cache(synth["train_jsonl"], str(cache), str(out), P, progress=False).reused == 8
    src = VideoSource(P, str(cache), "prefer_preprocessed")
    src.load(rec.video)
    assert (src.hits, src.misses) == (1, 0)
    # the entry is safetensors (no pickle): header is JSON
    raw = entry_path(cache, rec.video).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8: 8 + n])
    assert json.loads(header["__metadata__"]["params"]) == P.as_dict()


def test_mismatch_is_loud_or_rebuilt(synth, tmp_path):
    cache = tmp_path / "cache"
    rec = read_records(synth["train_jsonl"])[0][0]
    VideoSource(P, str(cache), "prefer_preprocessed", rebuild=True).load(rec.video)  # miss -> decode only
    build_cache(synth["train_jsonl"], str(cache), str(tmp_path / "o.jsonl"), P, progress=False)
    other = VideoParams(fps=2.0, max_frames=8, min_pixels=3136, max_pixels=6272, patch_size=14)
    with pytest.raises(CacheMismatchError) as ei:
        VideoSource(other, str(cache), "prefer_preprocessed").load(rec.video)
    msg = str(ei.value)
    assert "fps=1.0" in msg and "fps=2.0" in msg and "cache:" in msg and "run:" in msg and rec.video in msg
    s = VideoSource(other, str(cache), "prefer_preprocessed", rebuild=True)
    sample = s.load(rec.video)
    assert s.rebuilt == 1 and read_entry(cache, rec.video, other) is not None
    assert sample.params == other and len(sample.meta.frame_indices) == 8


def test_source_modes(synth, tmp_path):
    rec = read_records(synth["train_jsonl"])[0][0]
    with pytest.raises(CacheMissError, match="preprocessed_only"):
        VideoSource(P, str(tmp_path / "empty"), "preprocessed_only").load(rec.video)
    s = VideoSource(P, "", "realtime_only")
    assert not s.load(rec.video).from_cache and s.misses == 1
    with pytest.raises(ValueError, match="preprocessed_video_dir"):
        VideoSource(P, "", "prefer_preprocessed")


def test_failures_file_and_cli(synth, tmp_path, capsys):
    rows = [json.loads(x) for x in open(synth["train_jsonl"])][:2]
    rows[1]["videos"] = [str(tmp_path / "missing.mp4")]
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("video: {fps: 1.0, max_frames: 8, min_pixels: 3136, max_pixels: 6272}\nmodel: {tiny_family: qwen2_5_vl}\n")
    rc = cli(["cache", "--input", str(inp), "--output-dir", str(tmp_path / "c"), "--output", str(tmp_path / "o.jsonl"),
              "--config", str(cfg)])
    assert rc == 3
    out = re.sub(r" in \d+\.\ds ", " in Ts ", capsys.readouterr().out)  # the elapsed time varies
    want = f"cache: 2 videos: 1 built, 0 reused, 1 failed in Ts -> {tmp_path / 'c'}; rows -> {tmp_path / 'o.jsonl'}\n"
    assert out == want
    assert [json.loads(x)["videos"] for x in open(tmp_path / "o.jsonl")] == [rows[0]["videos"]]
    missing = str(tmp_path / "missing.mp4")
    failed = [json.loads(x) for x in open(tmp_path / "o.failed.jsonl")]
    assert failed == [{"line": f"{inp}:2", "video": missing, "error": f"{missing}: video file not found"}]


def test_changed_source_detected(synth, tmp_path):
    import os
    import shutil

    rec = read_records(synth["train_jsonl"])[0][0]
    v = tmp_path / "v.mp4"
    shutil.copy(rec.video, v)
    cache = tmp_path / "cache"
    from tempsamp.data.cache import write_entry

    write_entry(cache, decode_video(str(v), P))
    os.utime(v, ns=(1, 1))
    with pytest.raises(CacheMismatchError, match="changed since it was cached"):
        read_entry(cache, str(v), P)
