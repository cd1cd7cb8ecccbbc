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
    cap = capsys.readouterr()
    out = re.sub(r" in \d+\.\ds ", " in Ts ", cap.out)  # the elapsed time varies
    want = f"cache: 2 videos: 1 built, 0 reused, 1 failed in Ts -> {tmp_path / 'c'}; rows -> {tmp_path / 'o.jsonl'}\n"
    assert out == want
    assert [json.loads(x)["videos"] for x in open(tmp_path / "o.jsonl")] == [rows[0]["videos"]]
    missing = str(tmp_path / "missing.mp4")
    failed = [json.loads(x) for x in open(tmp_path / "o.failed.jsonl")]
    assert failed == [{"line": f"{inp}:2", "video": missing, "kind": "decode",
                       "error": f"{missing}: video file not found"}]
    # the console names the class, the video, the first error and where the full list is
    assert cap.err == ("tempsamp cache: 1 videos failed:\n"
                       "  1 videos missing, empty or not decodable (fix or drop them):\n"
                       f"    videos: {missing}\n"
                       f"    first error: {missing}: video file not found\n"
                       f"  every failed row, with its error: {tmp_path / 'o.failed.jsonl'}\n")


def test_param_mismatch_on_the_console(synth, tmp_path, capsys):
    """A cache built with other video parameters: the console shows the count, the first videos and both
    parameter sets, and points at the .failed.jsonl (which has every row)."""
    cache, inp = tmp_path / "c", synth["train_jsonl"]
    build_cache(inp, str(cache), str(tmp_path / "first.jsonl"), P, progress=False)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("video: {fps: 2.0, max_frames: 8, min_pixels: 3136, max_pixels: 6272}\nmodel: {tiny_family: qwen2_5_vl}\n")
    rc = cli(["cache", "--input", inp, "--output-dir", str(cache), "--output", str(tmp_path / "o.jsonl"),
              "--config", str(cfg)])
    assert rc == 3
    err = capsys.readouterr().err.splitlines()
    videos = sorted({r.video for r in read_records(inp)[0]})
    other = VideoParams.from_config(__import__("tempsamp.config", fromlist=["load_config"]).load_config(
        str(cfg), env={}).video, "qwen2_5_vl")
    fmt = lambda d: ", ".join(f"{k}={d[k]}" for k in sorted(d))  # noqa: E731
    assert err[0] == "tempsamp cache: 8 videos failed:"
    assert err[1].startswith("  8 cache entries built with other decode parameters (rerun with --rebuild")
    assert err[2] == f"    videos: {', '.join(videos[:3])} (+5 more)"
    assert err[3] == f"    cache: {fmt(P.as_dict())}" and "fps=1.0" in err[3]
    assert err[4] == f"    run:   {fmt(other.as_dict())}" and "fps=2.0" in err[4]
    assert err[5] == f"  every failed row, with its error: {tmp_path / 'o.failed.jsonl'}"
    failed = [json.loads(x) for x in open(tmp_path / "o.failed.jsonl")]
    assert len(failed) == len(read_records(inp)[0]) and {f["kind"] for f in failed} == {"params"}
    assert "fps=1.0" in failed[0]["error"] and "fps=2.0" in failed[0]["error"]


def test_files_follow_the_umask(synth, tmp_path):
    """The atomic writer creates files as open() would (0666 & ~umask), not mkstemp's 0600; the rename
    is kept (no temp file left behind)."""
    import os
    import stat

    from tempsamp.io import atomic_path

    old = os.umask(0o022)
    try:
        build_cache(synth["train_jsonl"], str(tmp_path / "c"), str(tmp_path / "o.jsonl"), P, progress=False)
        with atomic_path(tmp_path / "x.json") as tmp:
            open(tmp, "w").write("{}")
        os.umask(0o077)
        with atomic_path(tmp_path / "private.json") as tmp:
            open(tmp, "w").write("{}")
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    entries = list((tmp_path / "c").glob("*.safetensors"))
    assert entries and {mode(p) for p in entries} == {0o644}
    assert mode(tmp_path / "o.jsonl") == mode(tmp_path / "o.failed.jsonl") == mode(tmp_path / "x.json") == 0o644
    assert mode(tmp_path / "private.json") == 0o600
    assert not [p for p in tmp_path.rglob("*.tmp")]


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
