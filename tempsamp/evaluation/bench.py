"""Read TimeLens-Bench files (`<dataset>-timelens.json`) into flat, validated samples.

A bench file is `{video_id: {"duration": s, "queries"|"sentences": [...], "spans"|"timestamps": [...]}}`;
a span is `[s, e]` or nested once as `[[s, e]]`. Videos live at `video_shards/<dataset>/<video_id>.mp4`.
Every error names the file, the dataset, the video id and the field.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import msgspec

from ..config import DEFAULT_DATASETS, parse_dataset_list  # one implementation (config reads DATASETS)
from ..io import read_json_file

__all__ = ["DEFAULT_DATASETS", "BenchError", "BenchSample", "parse_dataset_list", "load_bench_file", "load_bench"]


class BenchError(ValueError):
    pass


class BenchSample(msgspec.Struct, frozen=True):
    dataset: str  # e.g. "charades-timelens"
    video_id: str
    query_index: int
    query: str
    gt: tuple[float, float]
    duration: float
    video: str  # absolute path

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.video_id}/{self.query_index}"


def _span(raw, where: str) -> tuple[float, float]:
    s = raw
    if isinstance(s, list) and len(s) == 1 and isinstance(s[0], list):
        s = s[0]
    if not (isinstance(s, list) and len(s) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                       for x in s)):
        raise BenchError(f"{where}: expected a span [start, end] or [[start, end]], got {json.dumps(raw)[:80]}")
    a, b = float(s[0]), float(s[1])
    if not (math.isfinite(a) and math.isfinite(b)) or a > b:
        raise BenchError(f"{where}: span {[a, b]} is not a finite [start <= end] pair")
    return a, b


def load_bench_file(path: str | Path, dataset: str, video_dir: str | Path,
                    skip_missing_videos: bool = False) -> tuple[list[BenchSample], list[str]]:
    """Samples of one bench file, and the video ids skipped because their video is missing."""
    path = Path(path)
    data = read_json_file(path, dict, BenchError, f"bench file of {dataset}")
    short = dataset[: -len("-timelens")] if dataset.endswith("-timelens") else dataset
    vdir = Path(video_dir) / short
    samples, missing = [], []
    for vid, entry in data.items():
        where = f"{path} [{dataset}] video {vid!r}"
        if not isinstance(entry, dict):
            raise BenchError(f"{where}: entry must be an object")
        queries = entry.get("queries", entry.get("sentences"))
        spans = entry.get("spans", entry.get("timestamps"))
        if queries is None:
            raise BenchError(f"{where}: missing field 'queries' (or 'sentences')")
        if spans is None:
            raise BenchError(f"{where}: missing field 'spans' (or 'timestamps')")
        if "duration" not in entry:
            raise BenchError(f"{where}: missing field 'duration'")
        try:
            duration = float(entry["duration"])
        except (TypeError, ValueError):
            raise BenchError(f"{where}: field 'duration' is not a number: {entry['duration']!r}") from None
        if not isinstance(queries, list) or not isinstance(spans, list) or len(queries) != len(spans):
            raise BenchError(f"{where}: 'queries' and 'spans' must be lists of equal length "
                             f"(got {len(queries) if isinstance(queries, list) else type(queries).__name__} and "
                             f"{len(spans) if isinstance(spans, list) else type(spans).__name__})")
        video = (vdir / f"{vid}.mp4").absolute()
        if not video.is_file():
            if skip_missing_videos:
                missing.append(vid)
                continue
            raise BenchError(f"{where}: video not found at {video} (use --skip-missing-videos to skip and count)")
        for qi, (q, sp) in enumerate(zip(queries, spans)):
            if not isinstance(q, str):
                raise BenchError(f"{where}: queries[{qi}] is not a string")
            samples.append(BenchSample(dataset=dataset, video_id=str(vid), query_index=qi, query=q,
                                       gt=_span(sp, f"{where} spans[{qi}]"), duration=duration, video=str(video)))
    return samples, missing


def load_bench(bench_dir: str | Path, datasets: list[str], skip_missing_videos: bool = False
               ) -> tuple[list[BenchSample], dict[str, list[str]]]:
    bench_dir = Path(bench_dir)
    if not bench_dir.is_dir():
        raise BenchError(f"bench dir {bench_dir} does not exist (set --bench-dir or BENCH_DIR)")
    video_dir = bench_dir / "video_shards"
    samples, missing = [], {}
    for ds in datasets:
        s, m = load_bench_file(bench_dir / f"{ds}.json", ds, video_dir, skip_missing_videos)
        samples += s
        missing[ds] = m
    return samples, missing


def first_per_dataset(samples: list[BenchSample], k: int) -> list[BenchSample]:
    """The first `k` samples of each dataset, datasets in their order (k = 0: all)."""
    if not k:
        return samples
    by: dict[str, list[BenchSample]] = {}
    for s in samples:
        by.setdefault(s.dataset, []).append(s)
    return [s for group in by.values() for s in group[:k]]
