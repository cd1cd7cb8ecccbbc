import json
from pathlib import Path

import numpy as np
import pytest

from tempsamp.cli import main as cli
from tempsamp.data.convert import ConvertOptions, convert_file, largest_remainder, resolve_video_path
from tempsamp.data.prompts import PROMPT_TEMPLATE, build_problem, extract_query
from tempsamp.data.records import RecordError, read_records


def _raw(vid="a", solution="7.0 to 11.0", **kw):
    d = {"messages": [{"role": "user", "content": build_problem("the person opens  the door.")}],
         "videos": [f"datasets/TimeLens-100K/video_shards/x/{vid}.mp4"], "solution": solution,
         "difficulty": 0.8778, "duration": 31.2}
    d.update(kw)
    return d


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    (r / "video_shards" / "x").mkdir(parents=True)
    for v in "abcdef":
        (r / "video_shards" / "x" / f"{v}.mp4").write_bytes(b"x")
    return r


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_exact_record_format(tmp_path, root):
    inp = _write(tmp_path / "raw.jsonl", [_raw()])
    rep = convert_file(str(inp), str(tmp_path / "out.jsonl"), ConvertOptions(video_root=str(root)))
    assert rep.written == 1
    rec = json.loads((tmp_path / "out.jsonl").read_text())
    assert rec["problem"].startswith("<video>To accurately pinpoint the event \"the person opens the door\"")
    assert rec["problem"] == "<video>" + PROMPT_TEMPLATE.format("the person opens the door")
    assert rec["answer"] == "<answer> 7.0 to 11.0 </answer>"
    assert rec["problem_type"] == "temporal grounding" and rec["data_type"] == "video"
    assert rec["videos"] == [str((root / "video_shards/x/a.mp4").absolute())]
    assert rec["difficulty"] == 0.8778 and rec["duration"] == 31.2 and rec["gt_len"] == 4.0
    assert extract_query(rec["problem"]) == "the person opens the door"
    recs, _ = read_records(tmp_path / "out.jsonl")
    assert recs[0].span() == (7.0, 11.0)


def test_prefixes_and_absolute_paths():
    assert resolve_video_path("datasets/TimeLens-100K/video_shards/a.mp4", "/r") == "/r/video_shards/a.mp4"
    assert resolve_video_path("datasets/other/a.mp4", "/r") == "/r/other/a.mp4"
    assert resolve_video_path("/abs/a.mp4", "/r") == "/abs/a.mp4"


@pytest.mark.parametrize("line,msg", [
    ("{not json", r"raw\.jsonl:2: malformed JSON"),
    (json.dumps({"videos": ["a.mp4"], "solution": "1 to 2"}), r"raw\.jsonl:2: missing field `messages`"),
    (json.dumps(_raw(solution=None)), r"raw\.jsonl:2: missing field `solution`"),
    (json.dumps(_raw(solution="12 to 3")), r"raw\.jsonl:2: span start 12.0 > end 3.0"),
    (json.dumps(_raw(solution="soon")), r"raw\.jsonl:2: `solution` 'soon' holds no start/end pair"),
    (json.dumps({k: v for k, v in _raw().items() if k != "videos"}), r"raw\.jsonl:2: missing field `videos`"),
    ("[1, 2]", r"raw\.jsonl:2: expected a JSON object"),
])
def test_bad_lines_stop_with_file_line(tmp_path, root, line, msg):
    inp = _write(tmp_path / "raw.jsonl", [_raw(), line])
    with pytest.raises(RecordError, match=msg):
        convert_file(str(inp), str(tmp_path / "o.jsonl"), ConvertOptions(video_root=str(root)))
    assert not (tmp_path / "o.jsonl").exists()  # nothing half-written


def test_non_utf8_line(tmp_path, root):
    inp = tmp_path / "raw.jsonl"
    inp.write_bytes(json.dumps(_raw()).encode() + b"\n\xff\xfe bad\n")
    with pytest.raises(RecordError, match=r"raw\.jsonl:2: not valid UTF-8"):
        convert_file(str(inp), str(tmp_path / "o.jsonl"), ConvertOptions(video_root=str(root)))


def test_skip_bad_counts(tmp_path, root, capsys):
    inp = _write(tmp_path / "raw.jsonl", [_raw("a"), "{bad", _raw("b", "9 to 2"), _raw("c")])
    rc = cli(["convert", "--input", str(inp), "--output", str(tmp_path / "o.jsonl"),
              "--video-root", str(root), "--skip-bad"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "wrote 2 records" in out and "skipped 2 bad lines" in out and "raw.jsonl:2" in out


def test_missing_videos_reported(tmp_path, root, capsys):
    inp = _write(tmp_path / "raw.jsonl", [_raw("a"), _raw("zz1"), _raw("zz2")])
    rc = cli(["convert", "--input", str(inp), "--output", str(tmp_path / "o.jsonl"), "--video_root", str(root)])
    err = capsys.readouterr().err
    assert rc == 2 and "2 of 3 video files do not exist" in err and "zz1.mp4" in err and "raw.jsonl:2" in err
    rep = convert_file(str(inp), str(tmp_path / "o.jsonl"), ConvertOptions(video_root=str(root), missing_videos="drop"))
    assert rep.written == 1 and rep.missing_videos == 2
    rep = convert_file(str(inp), str(tmp_path / "o.jsonl"), ConvertOptions(video_root=str(root), missing_videos="keep"))
    assert rep.written == 3


def test_filters_sampling_and_duration_sidecar(tmp_path, root):
    rows = [_raw(v, f"{i} to {i + 1 + i}", difficulty=0.1 * (i + 3), duration=None) for i, v in enumerate("abcdef")]
    for r in rows:
        r.pop("duration")
    inp = _write(tmp_path / "raw.jsonl", rows)
    side = _write(tmp_path / "dur.jsonl", [{"video": f"{v}.mp4", "duration": 60.0} for v in "abcdef"])
    o = tmp_path / "o.jsonl"
    rep = convert_file(str(inp), str(o), ConvertOptions(video_root=str(root), duration_file=str(side),
                                                         min_difficulty=0.4, max_gt_len=5.0))
    recs = [json.loads(x) for x in o.read_text().splitlines()]
    assert rep.filtered == 2 and all(r["duration"] == 60.0 for r in recs)
    assert [r["difficulty"] for r in recs] == pytest.approx([0.4, 0.5, 0.6, 0.7])
    s = convert_file(str(inp), str(o), ConvertOptions(video_root=str(root), stratify_by="gt_len", max_samples=20))
    # buckets <2s, 2-5s, 5-10s have rows (oversampled to their targets); 10-20s and >20s are empty
    assert s.written == sum(largest_remainder(20, [0.1325, 0.3232, 0.1940, 0.1410, 0.2094])[:3])


def test_gaussian_sampling_follows_the_difficulty_gaussian(tmp_path, root):
    """weight = N(d; 0.75, 0.2) / empirical density of d: the picks follow the gaussian, not the input's own
    difficulty distribution (here 4,000 rows, 80% of them easier than 0.5)."""
    d = np.concatenate([np.linspace(0, 0.5, 3200, endpoint=False), np.linspace(0.5, 1, 800, endpoint=False)])
    inp = _write(tmp_path / "raw.jsonl", [_raw("a", difficulty=float(x)) for x in d])
    o = tmp_path / "o.jsonl"
    opts = ConvertOptions(video_root=str(root), sampling="gaussian", max_samples=300, seed=1)
    assert convert_file(str(inp), str(o), opts).written == 300
    first = o.read_text()
    convert_file(str(inp), str(o), opts)
    assert o.read_text() == first  # seeded
    picked = np.array([json.loads(x)["difficulty"] for x in first.splitlines()])
    assert len(set(picked)) == 300  # without replacement
    # N(0.75, 0.2) on [0, 1] has 76% of its mass within mu +- sigma and 12% below 0.5; 300 draws of 4,000
    # without replacement: 74% and 14% (sd 2%). Uniform picks: 16% and 80%; without the density term: 54% and 37%.
    near, easy = float(np.mean((picked >= 0.55) & (picked <= 0.95))), float(np.mean(picked < 0.5))
    assert near > 0.5 and easy < 0.25, (near, easy)


def test_largest_remainder():
    assert largest_remainder(10, [0.1325, 0.3232, 0.1940, 0.1410, 0.2094]) == [1, 3, 2, 2, 2]
    assert sum(largest_remainder(2000, [0.3454, 0.2075, 0.1831, 0.1236, 0.1405])) == 2000


def test_read_records_errors(tmp_path):
    p = _write(tmp_path / "t.jsonl", [{"problem": "<video>x", "answer": "<answer> 1 to 2 </answer>", "videos": ["v.mp4"]},
                                      {"problem": "<video>x", "videos": ["v.mp4"]}])
    with pytest.raises(RecordError, match=r"t\.jsonl:2: missing field `answer`"):
        read_records(p)
    recs, errs = read_records(p, video_root="/vr", skip_bad=True)
    assert len(recs) == 1 and recs[0].video == "/vr/v.mp4" and len(errs) == 1
    with pytest.raises(RecordError, match="file not found"):
        read_records(tmp_path / "nope.jsonl")
