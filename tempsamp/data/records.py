"""Trainer JSONL records: schema, reading with line-numbered errors, GT span parsing."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

import msgspec

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)"


# why a row is bad (the `reason` of a RecordError / a bad_samples.jsonl row)
BAD_REASONS = ("unreadable_line", "bad_fields", "bad_span", "span_overrun", "missing_video", "undecodable_video")


class RecordError(ValueError):
    """A bad input line. The message starts with `file:line:`; `reason` is one of BAD_REASONS, `where`
    the `file:line`, `video` the row's video when known."""

    def __init__(self, msg: str, reason: str = "bad_fields", where: str = "", video: str = ""):
        super().__init__(msg)
        self.reason, self.where, self.video = reason, where, video


class TrainRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    problem: str
    answer: str  # "<answer> 98.0 to 103.0 </answer>"
    videos: list[str]
    problem_type: str = "temporal grounding"
    data_type: str = "video"
    difficulty: float | None = None
    duration: float | None = None
    gt_len: float | None = None
    # where it came from, for error messages (not written)
    source: str = ""
    # the span's end as written, when it ran past `duration` within the tolerance and was clamped (not written)
    clamped_from: float | None = None

    @property
    def video(self) -> str:
        return self.videos[0]

    def span(self) -> tuple[float, float]:
        return parse_answer_span(self.answer, where=self.source or "record")


def parse_answer_span(answer: str, where: str = "answer") -> tuple[float, float]:
    """GT span from a trainer `answer` (`<answer> s to e </answer>` or JSON `{"time": [s, e]}`)."""
    text = answer.strip()
    if text.startswith("{"):
        try:
            obj = json.loads(text)
            s, e = obj["time"]
            s, e = float(s), float(e)
        except (ValueError, KeyError, TypeError) as exc:
            raise RecordError(f"{where}: answer {answer!r} is not {{\"time\": [start, end]}} ({exc})",
                              "bad_span", where) from None
    else:
        nums = re.findall(_NUM, text)
        if len(nums) < 2:
            raise RecordError(f"{where}: answer {answer!r} holds no 'start to end' pair", "bad_span", where)
        s, e = float(nums[0]), float(nums[1])
    if s > e:
        raise RecordError(f"{where}: answer span start {s} > end {e}", "bad_span", where)
    return s, e


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict | None, str | None]]:
    """Yield (line_no, obj, error) for every non-empty line; never raises on bad lines.

    Errors are `file:line: what is wrong` strings; non-UTF-8 bytes are reported, not crashed on.
    """
    path = Path(path)
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield lineno, None, f"{where}: not valid UTF-8 ({e.reason} at byte {e.start})"
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                yield lineno, None, f"{where}: malformed JSON ({e.msg} at column {e.colno})"
                continue
            if not isinstance(obj, dict):
                yield lineno, None, f"{where}: expected a JSON object, got {type(obj).__name__}"
                continue
            yield lineno, obj, None


_REQUIRED = ("problem", "answer", "videos")


SPAN_OVERRUN_TOLERANCE_S = 1.0  # default of data.span_overrun_tolerance_s (see config.py for why)


def record_from_obj(obj: dict, where: str, video_root: str | None = None,
                    overrun_tolerance_s: float = SPAN_OVERRUN_TOLERANCE_S) -> TrainRecord:
    """A checked record. A span ending past `duration` by at most `overrun_tolerance_s` is clamped to the
    duration (`clamped_from` keeps the end as written); a larger overrun raises (reason span_overrun)."""
    for k in _REQUIRED:
        if k not in obj:
            raise RecordError(f"{where}: missing field `{k}` (a trainer record needs {', '.join(_REQUIRED)})",
                              "bad_fields", where)
    videos = obj["videos"]
    if isinstance(videos, str):
        videos = [videos]
    if not isinstance(videos, list) or not videos or not all(isinstance(v, str) for v in videos):
        raise RecordError(f"{where}: field `videos` must be a non-empty list of paths, got {obj['videos']!r}",
                          "bad_fields", where)
    if not isinstance(obj["problem"], str) or not isinstance(obj["answer"], str):
        raise RecordError(f"{where}: fields `problem` and `answer` must be strings", "bad_fields", where, videos[0])
    if video_root:
        videos = [v if Path(v).is_absolute() else str(Path(video_root) / v) for v in videos]
    known = {f for f in TrainRecord.__struct_fields__ if f not in _NOT_WRITTEN}
    kwargs = {k: obj[k] for k in known if k in obj}
    kwargs["videos"] = videos
    try:
        rec = msgspec.convert(kwargs, TrainRecord, strict=False)
    except msgspec.ValidationError as e:
        raise RecordError(f"{where}: {e}", "bad_fields", where, videos[0]) from None
    rec.source = where
    try:
        start, end = rec.span()  # validates the answer
    except RecordError as e:
        e.video = rec.video
        raise
    if rec.duration is not None and end > rec.duration:
        over = end - rec.duration
        if over > overrun_tolerance_s or start >= rec.duration:
            raise RecordError(f"{where}: answer span ends at {end:g} s, {over:.3g} s beyond the video's duration "
                              f"{rec.duration:g} s (data.span_overrun_tolerance_s={overrun_tolerance_s:g} clamps "
                              "smaller overruns)", "span_overrun", where, rec.video)
        rec = clamp_span(rec, start, rec.duration)
        rec.clamped_from = end
    return rec


def clamp_span(rec: TrainRecord, start: float, end: float) -> TrainRecord:
    """The record with its answer span set to (start, end), in the answer's own format."""
    if rec.answer.strip().startswith("{"):
        answer = json.dumps({"time": [start, end]})
    else:
        answer = f"<answer> {start} to {end} </answer>"
    gt_len = None if rec.gt_len is None else end - start
    return msgspec.structs.replace(rec, answer=answer, gt_len=gt_len)


def read_records(
    path: str | Path, video_root: str | None = None, skip_bad: bool = False,
    overrun_tolerance_s: float = SPAN_OVERRUN_TOLERANCE_S,
) -> tuple[list[TrainRecord], list[RecordError]]:
    """Read trainer JSONL. Bad lines raise RecordError, or are collected (with their reason) when skip_bad."""
    if not Path(path).is_file():
        raise RecordError(f"{path}: file not found", "unreadable_line", str(path))
    records: list[TrainRecord] = []
    errors: list[RecordError] = []
    for lineno, obj, err in iter_jsonl(path):
        if err is None:
            try:
                records.append(record_from_obj(obj, f"{path}:{lineno}", video_root, overrun_tolerance_s))
                continue
            except RecordError as e:
                exc = e
        else:
            exc = RecordError(err, "unreadable_line", f"{path}:{lineno}")
        if not skip_bad:
            raise exc
        errors.append(exc)
    return records, errors


def write_jsonl(path: str | Path, rows) -> int:
    """Atomically write rows (dicts or Structs) as JSONL. Returns the count."""
    from ..io import atomic_path

    n = 0
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for r in rows:
            if isinstance(r, TrainRecord):
                r = record_to_dict(r)
            f.write(json.dumps(r, ensure_ascii=False).encode() + b"\n")
            n += 1
    return n


def record_to_dict(r: TrainRecord) -> dict:
    d = msgspec.to_builtins(r)
    for k in _NOT_WRITTEN:
        d.pop(k, None)
    return d


_NOT_WRITTEN = ("source", "clamped_from")
