"""DecodeActor: decode (or cache-load) a video once; the returned sample lives in the object store
and its ObjectRef is handed to both rollout and learner (no second decode)."""

from __future__ import annotations

import time

import ray

from ..data.cache import VideoSource
from ..data.video import VideoParams, VideoSample
from .faults import FaultHooks


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
        from ..data.video import decode_video

        t = time.time()
        s = decode_video(path, params)
        self.seconds += time.time() - t
        self.decoded += 1
        return s

    def decode_frames(self, path: str, indices: list[int], params: VideoParams) -> VideoSample:
        """These exact source frames (re-framing's per-keyframe questions)."""
        from ..data.video import decode_frames

        return decode_frames(path, indices, params)

    def stats(self) -> dict:
        return {"decoded": self.decoded, "seconds": self.seconds, "cache_hits": self.source.hits,
                "cache_misses": self.source.misses, "cache_rebuilt": self.source.rebuilt}


@ray.remote
class DecodeActor(DecodeCore, FaultHooks):
    def decode(self, path: str) -> VideoSample:
        self._maybe_fault("decode")
        return super().decode(path)

    @ray.method(num_returns=2)
    def decode_with_status(self, path: str):
        """(sample, status): the driver waits on the small status object, so it never pulls frames."""
        s = self.decode(path)
        return s, {"path": path, "frames": len(s.meta.frame_indices)}

    def ping(self) -> bool:
        return True
