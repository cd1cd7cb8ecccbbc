"""Crop geometry in source pixels. The box size is fixed per video: the largest rectangle of the
target ratio inside the frame (floor, so it never leaves the frame); only its position moves."""

from __future__ import annotations


def crop_size(width: int, height: int, ratio: tuple[int, int]) -> tuple[int, int]:
    """(w, h) of the largest `ratio` = (tw, th) box inside a width x height frame, h = floor(w * th / tw)."""
    tw, th = ratio
    if tw <= 0 or th <= 0 or width <= 0 or height <= 0:
        raise ValueError(f"bad frame {width}x{height} or ratio {ratio}")
    w = min(width, (height * tw) // th)
    while w > 0 and (w * th) // tw > height:  # guard rounding (cannot happen with the floor above)
        w -= 1
    return w, box_height(w, ratio)


def box_height(w: int, ratio: tuple[int, int]) -> int:
    return (w * ratio[1]) // ratio[0]


def place_box(cx: float, cy: float, width: int, height: int, w: int, h: int) -> tuple[int, int]:
    """Top-left (x, y) of a w x h box centred at (cx, cy), clamped inside the frame, integers."""
    x = int(round(cx - w / 2))
    y = int(round(cy - h / 2))
    return max(0, min(x, width - w)), max(0, min(y, height - h))


def interpolate_centres(keys: dict[int, tuple[float, float]], frames: list[int]) -> dict[int, tuple[float, float]]:
    """Linear interpolation of keyframe centres at `frames` (held constant outside the keyframes)."""
    if not keys:
        raise ValueError("no keyframes")
    ks = sorted(keys)
    out = {}
    j = 0
    for f in frames:
        while j + 1 < len(ks) and ks[j + 1] <= f:
            j += 1
        if f <= ks[0]:
            out[f] = keys[ks[0]]
        elif f >= ks[-1]:
            out[f] = keys[ks[-1]]
        else:
            a, b = ks[j], ks[j + 1]
            t = (f - a) / (b - a)
            out[f] = (keys[a][0] + t * (keys[b][0] - keys[a][0]), keys[a][1] + t * (keys[b][1] - keys[a][1]))
    return out
