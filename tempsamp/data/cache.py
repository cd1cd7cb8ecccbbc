"""Stage B: decode each video once into a fingerprinted cache; load it back safely.

Entry: `<dir>/<sha256(abs path)[:20]>.safetensors` holding the frames tensor and, in the safetensors
header, the full decode parameters, the sampling metadata and the source file's size/mtime.
No pickle is involved in loading. Entries are written to a temp file and renamed (atomic).

Unlike the original (which silently used stale caches), an entry whose parameters differ from the
run's is an error that prints both parameter sets, or is rebuilt when asked (`rebuild=True`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import msgspec
import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..io import atomic_path
from ..progress import progress_bar
from .records import read_records, write_jsonl
from .video import VideoDecodeError, VideoMeta, VideoParams, VideoSample, decode_video, path_key, source_stat

log = logging.getLogger(__name__)
CACHE_FORMAT = "tempsamp-video-cache/1"


class CacheMismatchError(RuntimeError):
    """A cache entry was built with other decode parameters (or from another source file version).
    `kind` says which (see FAILURE_KINDS); for `params`, `cached` and `wanted` are both parameter sets."""

    def __init__(self, msg: str, kind: str = "unreadable", cached: dict | None = None, wanted: dict | None = None):
        super().__init__(msg)
        self.kind, self.cached, self.wanted = kind, cached, wanted


class CacheMissError(RuntimeError):
    """No cache entry, and the source mode forbids realtime decoding."""


def entry_path(cache_dir: str | Path, video_path: str) -> Path:
    return Path(cache_dir) / f"{path_key(video_path)}.safetensors"


def write_entry(cache_dir: str | Path, sample: VideoSample) -> Path:
    dst = entry_path(cache_dir, sample.meta.path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    header = {
        "format": CACHE_FORMAT,
        "params": json.dumps(sample.params.as_dict(), sort_keys=True),
        "meta": msgspec.json.encode(sample.meta).decode(),
        "source": json.dumps(source_stat(sample.meta.path)),
    }
    with atomic_path(dst) as tmp:
        save_file({"frames": torch.from_numpy(np.ascontiguousarray(sample.frames))}, tmp, metadata=header)
    return dst


def _describe(params: dict) -> str:
    return ", ".join(f"{k}={params[k]}" for k in sorted(params))


def read_entry(cache_dir: str | Path, video_path: str, params: VideoParams) -> VideoSample | None:
    """The cached sample, None when absent. Raises CacheMismatchError when built differently."""
    p = entry_path(cache_dir, video_path)
    if not p.is_file():
        return None
    try:
        with safe_open(str(p), framework="pt") as f:
            header = f.metadata() or {}
            if header.get("format") != CACHE_FORMAT:
                raise CacheMismatchError(f"{p}: not a {CACHE_FORMAT} entry (format={header.get('format')!r})",
                                         "unreadable")
            cached = json.loads(header["params"])
            wanted = params.as_dict()
            if cached != wanted:
                raise CacheMismatchError(
                    f"{p}: cache entry for {video_path} was built with other decode parameters.\n"
                    f"  cache: {_describe(cached)}\n  run:   {_describe(wanted)}\n"
                    "Rebuild it (`tempsamp cache ... --rebuild` or data.rebuild_cache=true) or point "
                    "data.preprocessed_video_dir at a cache built for these parameters.",
                    "params", cached, wanted)
            src = json.loads(header["source"])
            if os.path.exists(video_path) and src != source_stat(video_path):
                raise CacheMismatchError(
                    f"{p}: source video {video_path} changed since it was cached "
                    f"(cached size/mtime {src}, now {source_stat(video_path)}); rebuild the cache",
                    "source_changed")
            meta = msgspec.json.decode(header["meta"], type=VideoMeta)
            frames = f.get_tensor("frames").numpy()
    except CacheMismatchError:
        raise
    except Exception as e:
        raise CacheMismatchError(f"{p}: unreadable cache entry ({type(e).__name__}: {e}); rebuild the cache",
                                 "unreadable") from None
    return VideoSample(frames=frames, meta=meta, params=params, from_cache=True)


SourceMode = Literal["prefer_preprocessed", "preprocessed_only", "realtime_only"]


def cache_mode(data_cfg) -> SourceMode:
    """The video source mode a run's `data` config means: `data.video_source_mode` when
    `data.use_preprocessed`, else realtime_only (the cache is not touched)."""
    return data_cfg.video_source_mode if data_cfg.use_preprocessed else "realtime_only"


class VideoSource:
    """Where a run's frames come from: the Stage B cache and/or realtime decoding.

    mode: prefer_preprocessed (cache hit, else decode), preprocessed_only (miss = error),
    realtime_only (never touch the cache). A parameter mismatch is an error unless rebuild=True.
    """

    def __init__(self, params: VideoParams, cache_dir: str = "", mode: SourceMode = "realtime_only",
                 rebuild: bool = False):
        if mode != "realtime_only" and not cache_dir:
            raise ValueError(f"video_source_mode={mode} needs data.preprocessed_video_dir")
        self.params, self.cache_dir, self.mode, self.rebuild = params, cache_dir, mode, rebuild
        self.hits = self.misses = self.rebuilt = 0

    def load(self, video_path: str) -> VideoSample:
        if self.mode != "realtime_only":
            try:
                s = read_entry(self.cache_dir, video_path, self.params)
            except CacheMismatchError:
                if not self.rebuild:
                    raise
                s = decode_video(video_path, self.params)
                write_entry(self.cache_dir, s)
                self.rebuilt += 1
                return s
            if s is not None:
                self.hits += 1
                return s
            if self.mode == "preprocessed_only":
                raise CacheMissError(
                    f"{video_path}: not in cache {self.cache_dir} and video_source_mode=preprocessed_only")
        self.misses += 1
        return decode_video(video_path, self.params)


def check_cache_params(cache_dir: str | Path, videos: list[str], params: VideoParams, sample: int = 64) -> None:
    """Refuse a cache built with other decode parameters before a run starts: reads the header of up to
    `sample` entries (spread over `videos`) and raises CacheMismatchError, with both parameter sets, on
    the first mismatch. A whole cache is built with one parameter set, so a sample finds a wrong one;
    entries not checked here are still checked when they are loaded."""
    distinct = sorted(set(videos))
    stride = max(1, len(distinct) // max(1, sample))
    wanted = params.as_dict()
    for v in distinct[::stride][:sample]:
        p = entry_path(cache_dir, v)
        if not p.is_file():
            continue
        try:
            with safe_open(str(p), framework="pt") as f:
                cached = json.loads((f.metadata() or {}).get("params", "null"))
        except Exception as e:
            raise CacheMismatchError(f"{p}: unreadable cache entry ({type(e).__name__}: {e}); rebuild the cache",
                                     "unreadable") from None
        if cached != wanted:
            raise CacheMismatchError(
                f"{cache_dir}: the cache was built with other decode parameters than this run's "
                f"(first: {p.name}, for {v}).\n  cache: {_describe(cached or {})}\n  run:   {_describe(wanted)}\n"
                "Rebuild it (`tempsamp cache ... --rebuild` or data.rebuild_cache=true) or point "
                "data.preprocessed_video_dir at a cache built for these parameters.", "params", cached, wanted)


# failure classes of `tempsamp cache`, in the order they are reported, with what to do about each
FAILURE_KINDS = {
    "params": "cache entries built with other decode parameters (rerun with --rebuild, or use another "
              "--output-dir for these parameters)",
    "source_changed": "source videos changed since they were cached (rerun with --rebuild)",
    "unreadable": "unreadable or foreign cache entries (rerun with --rebuild)",
    "decode": "videos missing, empty or not decodable (fix or drop them)",
    "io": "cache entries that could not be written (disk full? permissions?)",
}


class FailureClass(msgspec.Struct):
    """One class of failed videos: how many, the first few, and for `params` the distinct parameter
    sets the entries were built with next to the run's."""

    kind: str
    count: int = 0
    videos: list[str] = msgspec.field(default_factory=list)  # the first FIRST_VIDEOS
    first_error: str = ""
    cached_params: list[dict] = msgspec.field(default_factory=list)  # params: distinct sets found
    wanted_params: dict = msgspec.field(default_factory=dict)


FIRST_VIDEOS = 3


class CacheReport(msgspec.Struct):
    total: int = 0
    built: int = 0
    reused: int = 0
    failed: int = 0
    seconds: float = 0.0
    failures: dict[str, FailureClass] = msgspec.field(default_factory=dict)  # kind -> class, FAILURE_KINDS order
    failed_jsonl: str = ""  # OUT.failed.jsonl: one line per failed row


def failure_report(rep: CacheReport) -> list[str]:
    """Console lines for the failures of a cache build: one block per class (count, first videos, for a
    parameter mismatch both parameter sets), then where the full list is."""
    lines = []
    for kind, fc in rep.failures.items():
        more = f" (+{fc.count - len(fc.videos)} more)" if fc.count > len(fc.videos) else ""
        lines.append(f"  {fc.count} {FAILURE_KINDS[kind]}:")
        lines.append(f"    videos: {', '.join(fc.videos)}{more}")
        if kind == "params":
            for c in fc.cached_params:
                lines.append(f"    cache: {_describe(c)}")
            lines.append(f"    run:   {_describe(fc.wanted_params)}")
        else:
            lines.append(f"    first error: {fc.first_error.splitlines()[0] if fc.first_error else ''}")
    if rep.failures:
        lines.append(f"  every failed row, with its error: {rep.failed_jsonl}")
    return lines


def build_cache(input_jsonl: str, cache_dir: str, output_jsonl: str, params: VideoParams,
                workers: int = 2, rebuild: bool = False, progress: bool = True) -> CacheReport:
    """Decode every distinct video of a trainer JSONL once. Writes OUT (successful rows only) and
    OUT.failed.jsonl (`{"line", "video", "kind", "error"}` per failed row); the report groups the
    failures by kind (`failure_report` says them on the console)."""

    t0 = time.time()
    records, _ = read_records(input_jsonl)
    videos = sorted({r.video for r in records})
    rep = CacheReport(total=len(videos))
    errors: dict[str, tuple[str, Exception]] = {}  # video -> (failure kind, error)

    def one(v: str) -> str:
        try:
            existing = read_entry(cache_dir, v, params)
            if existing is not None:
                return "reused"
        except CacheMismatchError as e:
            if not rebuild:
                errors[v] = (e.kind, e)
                return "failed"
        try:
            sample = decode_video(v, params)
        except VideoDecodeError as e:
            errors[v] = ("decode", e)
            return "failed"
        try:
            write_entry(cache_dir, sample)
            return "built"
        except OSError as e:
            errors[v] = ("io", e)
            return "failed"

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for status in progress_bar(pool.map(one, videos), total=len(videos), desc="cache", unit="video",
                                   enabled=progress):
            setattr(rep, status, getattr(rep, status) + 1)
    ok = [r for r in records if r.video not in errors]
    write_jsonl(output_jsonl, ok)
    failed = [{"line": r.source, "video": r.video, "kind": errors[r.video][0], "error": str(errors[r.video][1])}
              for r in records if r.video in errors]
    rep.failed_jsonl = (str(output_jsonl) + ".failed.jsonl" if not str(output_jsonl).endswith(".jsonl")
                        else str(output_jsonl)[: -len(".jsonl")] + ".failed.jsonl")
    write_jsonl(rep.failed_jsonl, failed)
    for kind in FAILURE_KINDS:
        vids = sorted(v for v, (k, _) in errors.items() if k == kind)
        if not vids:
            continue
        fc = FailureClass(kind=kind, count=len(vids), videos=vids[:FIRST_VIDEOS], first_error=str(errors[vids[0]][1]))
        if kind == "params":
            fc.wanted_params = params.as_dict()
            for v in vids:
                c = errors[v][1].cached
                if c is not None and c not in fc.cached_params:
                    fc.cached_params.append(c)
        rep.failures[kind] = fc
    rep.seconds = time.time() - t0
    return rep


__all__ = [
    "CacheMismatchError", "CacheMissError", "VideoSource", "build_cache", "failure_report", "cache_mode", "check_cache_params",
    "read_entry", "write_entry", "entry_path",
]
