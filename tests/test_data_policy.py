"""Data policy for large sets (pure, no Ray): bad rows skipped and counted per reason into
bad_samples.jsonl, small span overruns clamped, too many bad rows stop the run before training."""

import json
import pytest

from tempsamp.config import ConfigError, load_config
from tempsamp.data.dataset import BadSample, append_bad_samples, load_dataset
from tempsamp.data.records import RecordError, record_to_dict
from tempsamp.errors import BadSampleError

GOOD_ANSWER = "<answer> 2.0 to 5.0 </answer>"


def _row(video, answer=GOOD_ANSWER, duration=10.0, **kw):
    return json.dumps({"problem": "<video>find it", "answer": answer, "videos": [str(video)], "duration": duration,
                       **kw})


def _cfg(tmp_path, train, *extra):
    return load_config(None, [f"data.train_files=[{train}]", f"trainer.log_dir={tmp_path / 'logs'}",
                              "trainer.run_name=dp", *extra], env={})


def _report(tmp_path):
    return [json.loads(x) for x in (tmp_path / "logs" / "dp" / "bad_samples.jsonl").read_text().splitlines()]


@pytest.fixture
def video(tmp_path):
    v = tmp_path / "v.mp4"
    v.write_bytes(b"\0")  # existence is what loading checks; decoding is the decode actors' job
    return v


def _crafted(tmp_path, video):
    """Line -> expected outcome; 4 good rows, 1 clamped, 8 bad ones of every load-time reason."""
    lines = [
        (_row(video), "ok"),
        ('{"problem": "broken', "unreadable_line"),  # malformed JSON
        (b'{"problem": "\xff\xfe"}', "unreadable_line"),  # not UTF-8
        ("[1, 2]", "unreadable_line"),  # not an object
        (json.dumps({"problem": "<video>x", "videos": [str(video)]}), "bad_fields"),  # no answer
        (_row(video, answer="<answer> soon </answer>"), "bad_span"),
        (_row(video, answer="<answer> 6 to 3 </answer>"), "bad_span"),
        (_row(video, answer="<answer> 2.0 to 12.5 </answer>"), "span_overrun"),  # 2.5 s past 10 s
        (_row(video, answer="<answer> 2.0 to 10.4 </answer>", gt_len=8.4), "clamped"),  # 0.4 s past: clamped
        (_row(video, answer='{"time": [3, 10.5]}'), "clamped"),
        (_row(tmp_path / "missing.mp4"), "missing_video"),
        (_row(video, duration=None), "ok"),  # no duration: nothing to check against
        (_row(video, answer="<answer> 0 to 10.0 </answer>"), "ok"),  # ends exactly at the duration
    ]
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x, _ in lines) + b"\n")
    return path, [k for _, k in lines]


def test_bad_rows_are_skipped_counted_per_reason_and_written_with_file_line_and_video(tmp_path, video):
    path, kinds = _crafted(tmp_path, video)
    recs, skipped = load_dataset(_cfg(tmp_path, path, "data.max_bad_fraction=1.0"))
    assert len(recs) == kinds.count("ok") + kinds.count("clamped")
    bad = {i + 1: k for i, k in enumerate(kinds) if k not in ("ok", "clamped")}
    assert {(b.where, b.reason) for b in skipped} == {(f"{path}:{n}", k) for n, k in bad.items()}
    rows = _report(tmp_path)
    assert {(r["where"], r["reason"], r["action"]) for r in rows} == \
        {(f"{path}:{n}", k, "skipped") for n, k in bad.items()} | \
        {(f"{path}:{i + 1}", "span_clamped", "clamped") for i, k in enumerate(kinds) if k == "clamped"}
    by_where = {r["where"]: r for r in rows}
    assert by_where[f"{path}:11"]["video"] == str(tmp_path / "missing.mp4")
    assert by_where[f"{path}:8"]["video"] == str(video) and "2.5 s beyond the video's duration 10 s" in \
        by_where[f"{path}:8"]["detail"]
    assert "not valid UTF-8" in by_where[f"{path}:3"]["detail"]
    assert "missing field `answer`" in by_where[f"{path}:5"]["detail"]
    # clamped rows train on the span cut at the duration, in the answer's own format
    clamped = [r for r in recs if r.clamped_from is not None]
    assert [(r.span(), r.clamped_from) for r in clamped] == [((2.0, 10.0), 10.4), ((3.0, 10.0), 10.5)]
    assert clamped[0].answer == "<answer> 2.0 to 10.0 </answer>" and clamped[0].gt_len == pytest.approx(8.0)
    assert json.loads(clamped[1].answer) == {"time": [3.0, 10.0]}
    assert "clamped_from" not in record_to_dict(clamped[0])


def test_overrun_tolerance_is_the_config_key(tmp_path, video):
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join([_row(video), _row(video, answer="<answer> 2 to 10.4 </answer>"),
                               _row(video, answer="<answer> 10.2 to 10.4 </answer>")]) + "\n")
    recs, skipped = load_dataset(_cfg(tmp_path, path, "data.span_overrun_tolerance_s=0", "data.max_bad_fraction=1"))
    assert len(recs) == 1 and [b.reason for b in skipped] == ["span_overrun", "span_overrun"]
    recs, skipped = load_dataset(_cfg(tmp_path, path, "data.span_overrun_tolerance_s=0.5",
                                      "data.max_bad_fraction=1"))
    # a span that starts past the end would be empty once clamped: bad, whatever the tolerance
    assert len(recs) == 2 and [(b.where, b.reason) for b in skipped] == [(f"{path}:3", "span_overrun")]


def test_too_many_bad_rows_stop_before_training_with_the_counts_and_the_files(tmp_path, video):
    path = tmp_path / "big.jsonl"
    good = [_row(video)] * 99
    path.write_text("\n".join(good + [_row(tmp_path / "gone.mp4")]) + "\n")  # 1 of 100 bad: at the limit
    recs, skipped = load_dataset(_cfg(tmp_path, path))  # defaults: skip, max_bad_fraction 0.01
    assert len(recs) == 99 and len(skipped) == 1
    path.write_text("\n".join(good + [_row(tmp_path / "gone.mp4"), "{oops", _row(video, answer="x")]) + "\n")
    with pytest.raises(BadSampleError) as e:
        load_dataset(_cfg(tmp_path, path))
    msg = str(e.value)
    assert f"3 of 102 rows of {path} are bad (2.9 % > data.max_bad_fraction 1 %)" in msg
    assert "missing_video 1" in msg and "unreadable_line 1" in msg and "bad_span 1" in msg
    assert str(tmp_path / "logs" / "dp" / "bad_samples.jsonl") in msg and f"{path}:100: video not found" in msg
    assert len(_report(tmp_path)) == 3  # written before stopping, so the user can look at them
    load_dataset(_cfg(tmp_path, path, "data.max_bad_fraction=0.05"))  # a higher limit trains on the rest


def test_stop_policy_raises_at_the_first_bad_row(tmp_path, video):
    path, _ = _crafted(tmp_path, video)
    with pytest.raises(RecordError, match=rf"{path}:2: malformed JSON .*data.on_bad_sample=skip"):
        load_dataset(_cfg(tmp_path, path, "data.on_bad_sample=stop"))
    lines = path.read_text(errors="replace").splitlines()
    path.write_text("\n".join([lines[0], lines[10]]) + "\n")
    with pytest.raises(RecordError, match=rf"{path}:2: video not found: .*missing\.mp4"):
        load_dataset(_cfg(tmp_path, path, "data.on_bad_sample=stop"))
    with pytest.raises(RecordError, match=r"nope\.jsonl: file not found"):
        load_dataset(_cfg(tmp_path, tmp_path / "nope.jsonl"))


def test_a_reload_keeps_the_rows_skipped_while_training(tmp_path, video):
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join([_row(video)] * 3 + [_row(tmp_path / "gone.mp4")]) + "\n")
    cfg = _cfg(tmp_path, path, "data.max_bad_fraction=0.5")
    load_dataset(cfg)
    report = tmp_path / "logs" / "dp" / "bad_samples.jsonl"
    append_bad_samples(report, [BadSample(where=f"{path}:1", video=str(video), reason="undecodable_video",
                                          detail="moov atom not found", step=7)])
    load_dataset(cfg)  # a resumed run reads its data again
    rows = _report(tmp_path)
    assert sorted((r["reason"], r.get("step")) for r in rows) == [("missing_video", None), ("undecodable_video", 7)]


@pytest.mark.parametrize("key,value", [("data.max_bad_fraction", 1.5), ("data.max_bad_fraction", -0.1),
                                       ("data.span_overrun_tolerance_s", -1)])
def test_policy_keys_are_range_checked(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [f"{key}={value}"], env={})


def test_defaults_skip_with_a_one_percent_limit_and_one_second_tolerance():
    d = load_config(None, [], env={}).data
    assert (d.on_bad_sample, d.max_bad_fraction, d.span_overrun_tolerance_s) == ("skip", 0.01, 1.0)
