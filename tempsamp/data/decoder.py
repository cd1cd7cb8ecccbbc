"""The decode role's core: a video decoded (or loaded from the Stage B cache) once per step, with
counters. Config -> arguments: `decoder_args(cfg, params)`."""

from __future__ import annotations

import time

from .cache import VideoSource, cache_mode
from .video import VideoParams, VideoSample, decode_frames, decode_video


def decoder_args(cfg, params: VideoParams) -> dict:
    """DecodeCore keyword arguments of a training run."""
    d = cfg.data
    return dict(params=params, cache_dir=d.preprocessed_video_dir, mode=cache_mode(d), rebuild=d.rebuild_cache)


class DecodeCore:
    def __init__(self, params: VideoParams, cache_dir: str = "", mode: str = "realtime_only", rebuild: bool = False):
        self.source = VideoSource(params, cache_dir, mode, rebuild)
        self.decoded = 0
        self.seconds = 0.0

    def decode(self, path: str) -> VideoSample:
        t = time.time()
        s = self.source.load(path)
        self.seconds += time.time() - t
        self.decoded += 1
        return s

    def decode_with(self, path: str, params: VideoParams) -> VideoSample:
        """Decode with other parameters (evaluation protocol), bypassing the training cache."""
        t = time.time()
        s = decode_video(path, params)
        self.seconds += time.time() - t
        self.decoded += 1
        return s

    def decode_frames(self, path: str, indices: list[int], params: VideoParams) -> VideoSample:
        """These exact source frames (re-framing's per-keyframe questions)."""
        return decode_frames(path, indices, params)

    def stats(self) -> dict:
        return {"decoded": self.decoded, "seconds": self.seconds, "cache_hits": self.source.hits,
                "cache_misses": self.source.misses, "cache_rebuilt": self.source.rebuilt}
