"""The two baselines as pure functions: the centre box, and the two-stage Qwen-VL method's prompts,
parsers and frame/box planning (the model calls live in runner.py)."""

from __future__ import annotations

import json
import re

from .geometry import crop_size, interpolate_centres, place_box

STAGE1_PROMPT = (
    "Watch this video and find the single most highlight-worthy clip. Reply with JSON only, in the form "
    '{"segments": [[start_sec, end_sec]]}.'
)
STAGE2_PROMPT = (
    "Look at this frame and locate the centre of the most important subject. Reply with JSON only, in the "
    'form {"center": [x, y]} with x and y on a 0-1000 scale of the frame width and height.'
)
KEYFRAME_EVERY = 15
_PAIR = re.compile(r"\[\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*\]")


def center_predictions(n_frames: int, width: int, height: int, ratio: tuple[int, int], stride: int = 1) -> list[dict]:
    w, h = crop_size(width, height, ratio)
    x, y = place_box(width / 2, height / 2, width, height, w, h)
    return [{"frame": f, "bboxes": [x, y, w]} for f in range(0, n_frames, max(1, stride))]


def _json_obj(text: str) -> dict | None:
    a, b = text.find("{"), text.rfind("}")
    if a < 0 or b <= a:
        return None
    try:
        obj = json.loads(text[a: b + 1])
    except (json.JSONDecodeError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def parse_segments(text: str) -> list[tuple[float, float]]:
    """Segments in seconds from the stage-1 reply: the JSON's "segments", else any [a, b] pairs after
    the word "segments". Reversed pairs are swapped; negative or empty ones dropped."""
    text = text[:20000] if isinstance(text, str) else ""
    obj = _json_obj(text)
    pairs = []
    if obj is not None and isinstance(obj.get("segments"), list):
        for s in obj["segments"]:
            if isinstance(s, (list, tuple)) and len(s) == 2 and all(isinstance(v, (int, float)) for v in s):
                pairs.append((float(s[0]), float(s[1])))
    else:
        k = text.find("segments")
        if k >= 0:
            pairs = [(float(a), float(b)) for a, b in _PAIR.findall(text[k:])]
    out = []
    for a, b in pairs:
        a, b = min(a, b), max(a, b)
        if b > a and b > 0:
            out.append((max(0.0, a), b))
    return out


def segments_to_frames(segs: list[tuple[float, float]], fps: float, n_frames: int) -> list[tuple[int, int]]:
    """Seconds -> source frames by round(sec x fps), clamped to the video; overlapping clips merged."""
    spans = []
    for a, b in segs:
        f0 = min(max(0, round(a * fps)), n_frames - 1)
        f1 = min(max(0, round(b * fps)), n_frames - 1)
        if f1 >= f0:
            spans.append((f0, f1))
    spans.sort()
    merged: list[tuple[int, int]] = []
    for f0, f1 in spans:
        if merged and f0 <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], f1))
        else:
            merged.append((f0, f1))
    return merged


def keyframes(clips: list[tuple[int, int]], every: int = KEYFRAME_EVERY) -> list[int]:
    """Every `every`-th frame of each clip plus its last frame."""
    out = []
    for f0, f1 in clips:
        ks = list(range(f0, f1 + 1, every))
        if ks[-1] != f1:
            ks.append(f1)
        out += ks
    return out


def parse_center(text: str, width: int, height: int) -> tuple[float, float] | None:
    """Subject centre in source pixels from {"center": [x, y]} on a 0-1 (both <= 1), 0-1000 or pixel
    scale; None when it does not parse or lies outside the frame."""
    text = text[:20000] if isinstance(text, str) else ""
    obj = _json_obj(text)
    xy = None
    if obj is not None and isinstance(obj.get("center"), (list, tuple)) and len(obj["center"]) == 2:
        xy = obj["center"]
    else:
        k = text.find("center")
        m = _PAIR.search(text[k:]) if k >= 0 else None
        xy = [float(m.group(1)), float(m.group(2))] if m else None
    if xy is None or not all(isinstance(v, (int, float)) for v in xy):
        return None
    x, y = float(xy[0]), float(xy[1])
    if x < 0 or y < 0:
        return None
    if x <= 1 and y <= 1:
        return x * width, y * height
    if x <= 1000 and y <= 1000:
        return x / 1000 * width, y / 1000 * height
    if x <= width and y <= height:
        return x, y
    return None


def boxes_for_clips(clips: list[tuple[int, int]], centres: dict[int, tuple[float, float]], width: int, height: int,
                    ratio: tuple[int, int], stride: int = 1) -> list[dict]:
    """Boxes on every `stride`-th frame of the clips, centred on the keyframe centres linearly interpolated;
    no parsed keyframe -> centred boxes."""
    w, h = crop_size(width, height, ratio)
    frames = sorted({f for f0, f1 in clips for f in range(f0, f1 + 1, max(1, stride))} | {f1 for _, f1 in clips})
    if not frames:
        return []
    cs = interpolate_centres(centres, frames) if centres else {f: (width / 2, height / 2) for f in frames}
    out = []
    for f in frames:
        x, y = place_box(cs[f][0], cs[f][1], width, height, w, h)
        out.append({"frame": f, "bboxes": [x, y, w]})
    return out
