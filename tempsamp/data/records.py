"""Trainer JSONL records: schema, reading with line-numbered errors, GT span parsing."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

import msgspec

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)"


class RecordError(ValueError):
    """A bad input line. The message starts with `file:line:`."""


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
            raise RecordError(f"{where}: answer {answer!r} is not {{\"time\": [start, end]}} ({exc})") from None
    else:
        nums = re.findall(_NUM, text)
        if len(nums) < 2:
            raise RecordError(f"{where}: answer {answer!r} holds no 'start to end' pair")
        s, e = float(nums[0]), float(nums[1])
    if s > e:
        raise RecordError(f"{where}: answer span start {s} > end {e}")
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


SPAN_TOLERANCE_S = 0.05  # rounding slack between a span's end and the stated duration


def record_from_obj(obj: dict, where: str, video_root: str | None = None) -> TrainRecord:
    for k in _REQUIRED:
        if k not in obj:
            raise RecordError(f"{where}: missing field `{k}` (a trainer record needs {', '.join(_REQUIRED)})")
    videos = obj["videos"]
    if isinstance(videos, str):
        videos = [videos]
    if not isinstance(videos, list) or not videos or not all(isinstance(v, str) for v in videos):
        raise RecordError(f"{where}: field `videos` must be a non-empty list of paths, got {obj['videos']!r}")
    if not isinstance(obj["problem"], str) or not isinstance(obj["answer"], str):
        raise RecordError(f"{where}: fields `problem` and `answer` must be strings")
    if video_root:
        videos = [v if Path(v).is_absolute() else str(Path(video_root) / v) for v in videos]
    known = {f for f in TrainRecord.__struct_fields__ if f != "source"}
    kwargs = {k: obj[k] for k in known if k in obj}
    kwargs["videos"] = videos
    try:
        rec = msgspec.convert(kwargs, TrainRecord, strict=False)
    except msgspec.ValidationError as e:
        raise RecordError(f"{where}: {e}") from None
    rec.source = where
    start, end = rec.span()  # validates the answer
    if rec.duration is not None and end > rec.duration + SPAN_TOLERANCE_S:
        raise RecordError(f"{where}: answer span ends at {end:g} s, beyond the video's duration {rec.duration:g} s")
    return rec


def read_records(
    path: str | Path, video_root: str | None = None, skip_bad: bool = False
) -> tuple[list[TrainRecord], list[str]]:
    """Read trainer JSONL. Bad lines raise RecordError, or are collected when skip_bad."""
    if not Path(path).is_file():
        raise RecordError(f"{path}: file not found")
    records: list[TrainRecord] = []
    errors: list[str] = []
    for lineno, obj, err in iter_jsonl(path):
        if err is None:
            try:
                records.append(record_from_obj(obj, f"{path}:{lineno}", video_root))
                continue
            except RecordError as e:
                err = str(e)
        if not skip_bad:
            raise RecordError(err)
        errors.append(err)
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
    d.pop("source", None)
    return d
