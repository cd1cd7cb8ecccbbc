"""DecodeActor: decode (or cache-load) a video once (core: data/decoder.DecodeCore); the returned
sample lives in the object store and its ObjectRef is handed to both rollout and learner (no second
decode)."""

from __future__ import annotations

import ray

from ..data.decoder import DecodeCore
from ..data.video import VideoParams, VideoSample
from .faults import FaultHooks


@ray.remote
class DecodeActor(FaultHooks):
    def __init__(self, params: VideoParams, cache_dir: str = "", mode: str = "realtime_only", rebuild: bool = False):
        self.core = DecodeCore(params, cache_dir, mode, rebuild)

    def decode(self, path: str) -> VideoSample:
        self._maybe_fault("decode")
        return self.core.decode(path)

    @ray.method(num_returns=2)
    def decode_with_status(self, path: str):
        """(sample, status): the driver waits on the small status object, so it never pulls frames."""
        s = self.decode(path)
        return s, {"path": path, "frames": len(s.meta.frame_indices)}

    def decode_with(self, path: str, params: VideoParams) -> VideoSample:
        return self.core.decode_with(path, params)

    def decode_frames(self, path: str, indices: list[int], params: VideoParams) -> VideoSample:
        return self.core.decode_frames(path, indices, params)

    def stats(self) -> dict:
        return self.core.stats()

    def ping(self) -> bool:
        return True
