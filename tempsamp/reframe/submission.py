"""Index and submission files, and the validator of every format rule."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec

from ..io import read_json_file

from .geometry import crop_size


class ReframeError(ValueError):
    pass


class IndexEntry(msgspec.Struct, frozen=True):
    video_id: str
    targetRatioWH: tuple[int, int]  # noqa: N815 (the competition's field name)


def read_index(path: str | Path) -> list[IndexEntry]:
    p = Path(path)
    raw = read_json_file(p, list, ReframeError, "index file")
    out = []
    for i, e in enumerate(raw):
        try:
            ent = msgspec.convert(e, IndexEntry, strict=False)
        except msgspec.ValidationError as err:
            raise ReframeError(f"{p}: entry {i}: {err}") from None
        if tuple(ent.targetRatioWH) not in ((16, 9), (9, 16)):
            raise ReframeError(f"{p}: entry {i} (video {ent.video_id}): targetRatioWH {list(ent.targetRatioWH)} "
                               "is not [16, 9] or [9, 16]")
        out.append(ent)
    return out


def video_path(video_dir: str | Path, video_id: str) -> Path:
    return Path(video_dir) / f"{video_id}.mp4"


def video_geometry(path: str | Path) -> tuple[int, int, int, float]:
    """(frames, width, height, fps) of a video, read from its header by decord."""
    import decord

    vr = decord.VideoReader(str(path), num_threads=1)
    h, w = vr[0].shape[:2]
    return len(vr), int(w), int(h), float(vr.get_avg_fps())


def read_submission(path: str | Path) -> tuple[list[dict], list[str]]:
    """Lines as dicts, plus errors (`file:line: ...`) for lines that are not JSON objects."""
    lines, errors = [], []
    p = Path(path)
    if not p.exists():
        return [], []
    for i, raw in enumerate(p.read_bytes().splitlines(), 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            errors.append(f"{p}:{i}: not JSON ({e})")
            continue
        if not isinstance(obj, dict):
            errors.append(f"{p}:{i}: not a JSON object")
            continue
        obj["_line"] = i
        lines.append(obj)
    return lines, errors


def validate(index: list[IndexEntry], predictions_path: str | Path, video_dir: str | Path) -> tuple[list[str], dict]:
    """Every rule of the format. Returns (errors, summary)."""
    lines, errors = read_submission(predictions_path)
    p = Path(predictions_path)
    want = {e.video_id: e for e in index}
    seen: dict[str, int] = {}
    boxes = 0
    with_boxes = 0
    for obj in lines:
        where = f"{p}:{obj['_line']}"
        vid = obj.get("video_id")
        if not isinstance(vid, str):
            errors.append(f"{where}: video_id missing or not a string")
            continue
        if vid not in want:
            errors.append(f"{where}: video {vid!r} is not in the index")
            continue
        if vid in seen:
            errors.append(f"{where}: video {vid!r} appears again (first at line {seen[vid]})")
            continue
        seen[vid] = obj["_line"]
        ratio = tuple(want[vid].targetRatioWH)
        if obj.get("targetRatioWH") != list(ratio):
            errors.append(f"{where}: video {vid!r}: targetRatioWH {obj.get('targetRatioWH')} != index {list(ratio)}")
        preds = obj.get("predictions")
        if not isinstance(preds, list):
            errors.append(f"{where}: video {vid!r}: predictions must be a list")
            continue
        if not preds:
            continue
        vp = video_path(video_dir, vid)
        if not vp.is_file():
            errors.append(f"{where}: video {vid!r}: {vp} not found (needed to check frames and boxes)")
            continue
        n, width, height, _ = video_geometry(vp)
        w_ok, h_ok = crop_size(width, height, ratio)
        frames_seen = set()
        with_boxes += 1
        for k, b in enumerate(preds):
            bw = f"{where}: video {vid!r} predictions[{k}]"
            if not isinstance(b, dict) or not isinstance(b.get("frame"), int) or isinstance(b.get("frame"), bool):
                errors.append(f"{bw}: needs an integer 'frame'")
                continue
            f = b["frame"]
            if not 0 <= f < n:
                errors.append(f"{bw}: frame {f} outside 0..{n - 1}")
            if f in frames_seen:
                errors.append(f"{bw}: frame {f} repeated")
            frames_seen.add(f)
            bb = b.get("bboxes")
            if not (isinstance(bb, list) and len(bb) == 3 and all(isinstance(x, int) and not isinstance(x, bool)
                                                                   for x in bb)):
                errors.append(f"{bw}: bboxes must be [x, y, w] integers, got {bb!r}")
                continue
            x, y, w = bb
            h = (w * ratio[1]) // ratio[0]
            if w != w_ok:
                errors.append(f"{bw}: box width {w} != {w_ok} (largest {ratio[0]}:{ratio[1]} box in {width}x{height})")
            if x < 0 or y < 0 or x + w > width or y + h > height:
                errors.append(f"{bw}: box [{x}, {y}, {w}x{h}] leaves the {width}x{height} frame")
            boxes += 1
    for vid in want:
        if vid not in seen:
            errors.append(f"{p}: video {vid!r} from the index has no line")
    summary = {"index_videos": len(want), "lines": len(lines), "videos_with_boxes": with_boxes, "boxes": boxes,
               "errors": len(errors)}
    return errors, summary
