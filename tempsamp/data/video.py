"""Frame sampling and resizing with qwen-vl-utils `fetch_video` semantics, decoded with decord.

We import qwen-vl-utils' own pure sizing rules (`smart_nframes`, `smart_resize`) instead of copying
them, so frame counts and H x W cannot drift from the library the original uses; what we replace is
the expensive part: frames stay uint8 (qwen-vl-utils returns float32), are resized with one
antialiased bicubic `torch.nn.functional.interpolate` (no torchvision), and carry their sampling
metadata (source fps, frame indices, timestamps, sample fps) so prompt timestamps are exact.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np
import torch
import torch.nn.functional as F

FRAME_FACTOR = 2
_FAMILY_PATCH = {"qwen2_5_vl": 14, "qwen2_vl": 14, "qwen3_vl": 16, "qwen3_5": 16}


class VideoDecodeError(RuntimeError):
    """A video is missing, corrupt or too short. The message names the file."""


class VideoParams(msgspec.Struct, frozen=True, kw_only=True):
    """Everything that determines the decoded frames. Its fingerprint keys the Stage B cache."""

    fps: float = 2.0
    min_frames: int = 4
    max_frames: int = 768  # 0 = no explicit cap (qwen-vl-utils default: min(768, total frames))
    min_pixels: int = 4096
    max_pixels: int = 786432
    total_pixels: int = 14_680_064
    patch_size: int = 16
    merge_size: int = 2

    @property
    def image_factor(self) -> int:
        return self.patch_size * self.merge_size

    def as_dict(self) -> dict:
        return msgspec.to_builtins(self)

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def qwen_ele(self, path: str) -> dict:
        """The `ele` dict qwen-vl-utils' fetch_video takes for the same parameters."""
        ele = {
            "video": path,
            "fps": self.fps,
            "min_frames": self.min_frames,
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
            "total_pixels": self.total_pixels,
        }
        if self.max_frames:
            ele["max_frames"] = self.max_frames
        return ele

    @classmethod
    def from_config(cls, video_cfg, family: str = "qwen3_5") -> "VideoParams":
        patch = video_cfg.patch_size or _FAMILY_PATCH.get(family, 16)
        return cls(
            fps=video_cfg.fps,
            min_frames=video_cfg.min_frames,
            max_frames=video_cfg.max_frames,
            min_pixels=video_cfg.min_pixels,
            max_pixels=video_cfg.max_pixels,
            total_pixels=video_cfg.total_pixels,
            patch_size=patch,
            merge_size=video_cfg.merge_size,
        )


class VideoMeta(msgspec.Struct, kw_only=True):
    path: str
    source_fps: float
    total_num_frames: int
    frame_indices: list[int]
    sample_fps: float
    height: int  # resized
    width: int
    source_height: int
    source_width: int

    @property
    def duration(self) -> float:
        return self.total_num_frames / self.source_fps if self.source_fps > 0 else 0.0

    @property
    def timestamps(self) -> list[float]:
        return [i / self.source_fps for i in self.frame_indices]

    def hf_metadata(self) -> dict:
        """The metadata dict transformers' video processors and vLLM take with do_sample_frames=False."""
        return {
            "fps": self.source_fps,
            "frames_indices": list(self.frame_indices),
            "total_num_frames": self.total_num_frames,
            "duration": self.duration,
            "video_backend": "decord",
            "height": self.source_height,
            "width": self.source_width,
        }


@dataclass
class VideoSample:
    """Decoded, resized frames (T, H, W, 3) uint8 plus how they were sampled."""

    frames: np.ndarray
    meta: VideoMeta
    params: VideoParams
    from_cache: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return int(self.frames.nbytes)


def _qwen_rules():
    # qwen_vl_utils imports torchvision at module level; our env's shim makes that safe.
    from qwen_vl_utils.vision_process import VIDEO_MAX_TOKEN_NUM, smart_nframes, smart_resize

    return smart_nframes, smart_resize, VIDEO_MAX_TOKEN_NUM


def plan_sampling(total_frames: int, source_fps: float, height: int, width: int, params: VideoParams,
                  path: str = "video") -> tuple[list[int], int, int, float]:
    """Frame indices, resized H, W and sample fps exactly as qwen-vl-utils' fetch_video would pick."""
    smart_nframes, smart_resize, max_tokens = _qwen_rules()
    ele = params.qwen_ele(path)
    ele.pop("video")
    try:
        nframes = smart_nframes(ele, total_frames=total_frames, video_fps=source_fps)
    except (ValueError, AssertionError) as e:
        raise VideoDecodeError(f"{path}: cannot sample frames ({total_frames} frames @ {source_fps:.3f} fps): {e}") from None
    idx = torch.linspace(0, total_frames - 1, nframes).round().long().tolist()
    sample_fps = nframes / max(total_frames, 1e-6) * source_fps
    f = params.image_factor
    min_pixels = params.min_pixels
    max_pixels = max(min(max_tokens * f * f, params.total_pixels / nframes * FRAME_FACTOR), int(min_pixels * 1.05))
    max_pixels = min(params.max_pixels, max_pixels)
    try:
        h, w = smart_resize(height, width, factor=f, min_pixels=min_pixels, max_pixels=max_pixels)
    except (ValueError, AssertionError) as e:
        raise VideoDecodeError(f"{path}: cannot size frames {height}x{width}: {e}") from None
    return idx, h, w, sample_fps


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """(T, H, W, 3) uint8 -> resized (T, h, w, 3) uint8, antialiased bicubic (qwen-vl-utils' filter)."""
    if frames.shape[1] == height and frames.shape[2] == width:
        return np.ascontiguousarray(frames)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2)
    y = F.interpolate(x, size=(height, width), mode="bicubic", antialias=True)
    return y.permute(0, 2, 3, 1).contiguous().numpy()


def decode_video(path: str | os.PathLike, params: VideoParams) -> VideoSample:
    """Decode, sample and resize one video. Missing/corrupt files raise VideoDecodeError naming the file."""
    import decord

    path = str(path)
    if not os.path.isfile(path):
        raise VideoDecodeError(f"{path}: video file not found")
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(f"{path}: video file is empty (0 bytes)")
    try:
        vr = decord.VideoReader(path, num_threads=1)
        total, fps = len(vr), float(vr.get_avg_fps())
        h0, w0 = vr[0].shape[:2] if total else (0, 0)
    except Exception as e:  # decord raises DECORDError / RuntimeError with C++ text
        raise VideoDecodeError(f"{path}: cannot open video ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if total <= 0 or fps <= 0:
        raise VideoDecodeError(f"{path}: video has no frames or no frame rate (frames={total}, fps={fps})")
    idx, h, w, sample_fps = plan_sampling(total, fps, h0, w0, params, path)
    try:
        raw = vr.get_batch(idx).asnumpy()
    except Exception as e:
        raise VideoDecodeError(f"{path}: decoding frames failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    frames = resize_frames(raw, h, w)
    meta = VideoMeta(
        path=path, source_fps=fps, total_num_frames=total, frame_indices=idx, sample_fps=sample_fps,
        height=h, width=w, source_height=int(h0), source_width=int(w0),
    )
    return VideoSample(frames=frames, meta=meta, params=params)


def decode_frames(path: str | os.PathLike, indices: list[int], params: VideoParams) -> VideoSample:
    """Exactly these source frames, resized by the same pixel rules. Re-framing asks per-frame
    questions with a "still video": it passes one frame twice ([f, f]) so Qwen's temporal patch of 2
    sees that single frame."""
    import decord

    path = str(path)
    try:
        vr = decord.VideoReader(path, num_threads=1)
        total, fps = len(vr), float(vr.get_avg_fps())
        raw = vr.get_batch([min(max(0, i), total - 1) for i in indices]).asnumpy()
    except Exception as e:
        raise VideoDecodeError(f"{path}: cannot read frames {indices[:5]}: {type(e).__name__}: {str(e)[:200]}") from None
    h0, w0 = raw.shape[1:3]
    _, smart_resize, _ = _qwen_rules()
    h, w = smart_resize(h0, w0, factor=params.image_factor, min_pixels=params.min_pixels,
                        max_pixels=params.max_pixels)
    meta = VideoMeta(path=path, source_fps=fps, total_num_frames=total, frame_indices=list(indices),
                     sample_fps=fps, height=h, width=w, source_height=int(h0), source_width=int(w0))
    return VideoSample(frames=resize_frames(raw, h, w), meta=meta, params=params)


def source_stat(path: str) -> dict:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def path_key(path: str) -> str:
    return hashlib.sha256(str(Path(path).absolute()).encode()).hexdigest()[:20]
