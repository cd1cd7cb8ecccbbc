"""Deterministic synthetic temporal-grounding data: videos with a known event span, plus
(a) raw TimeLens-100K-style JSONL for Stage A, (b) trainer JSONL, (c) a TimeLens-Bench-style folder.

An event is a coloured shape that appears at `start` and leaves at `end` (moving while visible) on
a gradient background, so the span is exactly known and rewards / IoU in tests are meaningful.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import msgspec
import numpy as np

from .prompts import build_problem

log = logging.getLogger(__name__)

COLORS = {
    "red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (235, 220, 40),
    "purple": (150, 60, 200), "white": (245, 245, 245), "orange": (245, 140, 30), "cyan": (40, 220, 220),
}
SHAPES = ("square", "circle", "bar")
BENCH_DATASETS = ("charades", "activitynet", "qvhighlights")


class SynthVideo(msgspec.Struct):
    video_id: str
    path: str
    duration: float
    fps: int
    width: int
    height: int
    start: float
    end: float
    query: str


def _frame(t: float, spec: SynthVideo, color, shape: str, base: np.ndarray) -> np.ndarray:
    img = base.copy()
    if spec.start <= t < spec.end:
        h, w = spec.height, spec.width
        size = max(6, min(h, w) // 4)
        prog = (t - spec.start) / max(spec.end - spec.start, 1e-6)
        cx = int(size + prog * (w - 2 * size))
        cy = h // 2
        y0, y1 = max(0, cy - size // 2), min(h, cy + size // 2)
        x0, x1 = max(0, cx - size // 2), min(w, cx + size // 2)
        if shape == "square":
            img[y0:y1, x0:x1] = color
        elif shape == "bar":
            img[max(0, cy - size // 6): cy + size // 6, x0:x1] = color
        else:
            yy, xx = np.ogrid[y0:y1, x0:x1]
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= (size // 2) ** 2
            img[y0:y1, x0:x1][mask] = color
    return img


def write_video(spec: SynthVideo, color, shape: str, seed: int) -> None:
    import av

    rng = np.random.default_rng(seed)
    Path(spec.path).parent.mkdir(parents=True, exist_ok=True)
    gy = np.linspace(0, 1, spec.height)[:, None, None]
    gx = np.linspace(0, 1, spec.width)[None, :, None]
    tint = rng.uniform(20, 90, size=3)
    base = (tint + 40 * gy + 30 * gx).clip(0, 255).astype(np.uint8)
    base = np.broadcast_to(base, (spec.height, spec.width, 3)).copy()
    tmp = spec.path + ".tmp.mp4"
    with av.open(tmp, mode="w") as container:
        stream = container.add_stream("libx264", rate=spec.fps)
        stream.width, stream.height = spec.width, spec.height
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "23"}
        n = int(round(spec.duration * spec.fps))
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(_frame(i / spec.fps, spec, color, shape, base), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    Path(tmp).replace(spec.path)


def make_spec(video_id: str, path: str, rng: np.random.Generator, sizes=None) -> tuple[SynthVideo, tuple, str]:
    sizes = sizes or [(160, 96), (128, 128), (96, 160), (192, 108)]
    w, h = sizes[int(rng.integers(len(sizes)))]
    fps = int(rng.choice([8, 10, 12, 15]))
    duration = float(rng.integers(8, 21))
    glen = float(np.round(rng.uniform(1.5, duration * 0.6), 1))
    start = float(np.round(rng.uniform(0.5, duration - glen - 0.25), 1))
    end = float(np.round(min(start + glen, duration - 0.1), 1))
    cname = list(COLORS)[int(rng.integers(len(COLORS)))]
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    query = f"the {cname} {shape} moves across the screen"
    spec = SynthVideo(video_id=video_id, path=path, duration=duration, fps=fps, width=w, height=h,
                      start=start, end=end, query=query)
    return spec, COLORS[cname], shape


def generate(out: str | Path, n_train: int = 24, n_bench: int = 6, seed: int = 0) -> dict:
    """Write the whole synthetic bundle under `out`. Returns the paths (also in out/manifest.json).

    Layout:
      timelens100k/video_shards/synth/<id>.mp4      videos referenced by the raw JSONL
      raw_timelens.jsonl                            raw TimeLens-100K lines (Stage A input)
      train.jsonl                                   trainer JSONL (Stage A output, absolute paths)
      bench/<dataset>-timelens.json + bench/video_shards/<dataset>/<id>.mp4
    """
    from .convert import ConvertOptions, convert_file

    out = Path(out).absolute()
    rng = np.random.default_rng(seed)
    video_root = out / "timelens100k"
    raw_lines = []
    for i in range(n_train):
        vid = f"synth_{i:04d}"
        path = video_root / "video_shards" / "synth" / f"{vid}.mp4"
        spec, color, shape = make_spec(vid, str(path), rng)
        if not path.exists():
            write_video(spec, color, shape, seed * 100003 + i)
        raw_lines.append({
            "messages": [{"role": "user", "content": build_problem(spec.query)}],
            "videos": [f"datasets/TimeLens-100K/video_shards/synth/{vid}.mp4"],
            "solution": f"{spec.start} to {spec.end}",
            "difficulty": float(np.round(rng.uniform(0.3, 1.0), 4)),
            "duration": spec.duration,
            "source": "synth",
        })
    raw_path = out / "raw_timelens.jsonl"
    raw_path.parent.mkdir(parents=True, exist_ok=True)
    raw_path.write_text("".join(json.dumps(r) + "\n" for r in raw_lines))
    train_path = out / "train.jsonl"
    convert_file(str(raw_path), str(train_path), ConvertOptions(video_root=str(video_root)))

    bench = out / "bench"
    for d_i, ds in enumerate(BENCH_DATASETS):
        entries: dict = {}
        for j in range(n_bench):
            vid = f"{ds}_{j:03d}"
            path = bench / "video_shards" / ds / f"{vid}.mp4"
            spec, color, shape = make_spec(vid, str(path), rng)
            if not path.exists():
                write_video(spec, color, shape, seed * 7919 + d_i * 1000 + j)
            span = [spec.start, spec.end]
            # the three bench files use the key variants real TimeLens-Bench files use
            if ds == "charades":
                entries[vid] = {"duration": spec.duration, "queries": [spec.query], "spans": [span]}
            elif ds == "activitynet":
                entries[vid] = {"duration": spec.duration, "sentences": [spec.query], "timestamps": [span]}
            else:
                entries[vid] = {"duration": spec.duration, "queries": [spec.query], "spans": [[span]]}
        (bench / f"{ds}-timelens.json").write_text(json.dumps(entries, indent=1))
    manifest = {
        "raw_jsonl": str(raw_path), "video_root": str(video_root), "train_jsonl": str(train_path),
        "bench_dir": str(bench), "n_train": n_train, "n_bench": n_bench, "seed": seed,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest
