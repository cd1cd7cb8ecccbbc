"""Decode benchmark: our decode+sample (decord, uint8, one interpolate) vs qwen-vl-utils
`fetch_video` on the same synthetic videos and parameters (same frames), and Stage B cached load
vs realtime decode. Prints ratios measured in the same run; appends to benchmarks/RESULTS.md.

    python benchmarks/decode.py [--videos 6] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("FORCE_QWENVL_VIDEO_READER", "decord")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    from qwen_vl_utils import fetch_video

    from tempsamp.data.cache import read_entry, write_entry
    from tempsamp.data.synthetic import SynthVideo, write_video
    from tempsamp.data.video import VideoParams, decode_video

    work = Path(tempfile.mkdtemp(prefix="tempsamp-bench-"))
    paths = []
    for i in range(a.videos):  # 30 s, 360p, 30 fps like the MEASURED.md anchor
        p = str(work / f"v{i}.mp4")
        write_video(SynthVideo(video_id=str(i), path=p, duration=30.0, fps=30, width=640, height=360,
                               start=5.0, end=12.0, query="q"), (200, 50, 50), "square", i)
        paths.append(p)
    params = VideoParams()  # training parameters (fps 2, patch 16)

    def timed(fn):
        best = float("inf")
        for _ in range(a.repeats):
            t = time.perf_counter()
            for p in paths:
                fn(p)
            best = min(best, time.perf_counter() - t)
        return best

    frames = sum(len(decode_video(p, params).meta.frame_indices) for p in paths)
    t_ref = timed(lambda p: fetch_video(params.qwen_ele(p), image_patch_size=params.patch_size))
    t_ours = timed(lambda p: decode_video(p, params))
    cache = work / "cache"
    for p in paths:
        write_entry(cache, decode_video(p, params))
    t_cache = timed(lambda p: read_entry(cache, p, params))
    lines = [
        f"## decode — {time.strftime('%Y-%m-%d %H:%M')} — {platform.machine()}, {os.cpu_count()} cores",
        f"{a.videos} videos (30 s, 640x360, 30 fps), {frames} sampled frames total, best of {a.repeats}",
        f"- qwen-vl-utils fetch_video: {frames / t_ref:8.1f} frames/s",
        f"- tempsamp decode_video:     {frames / t_ours:8.1f} frames/s  -> {t_ref / t_ours:.2f}x qwen-vl-utils (target >= 2x)",
        f"- Stage B cached load:       {frames / t_cache:8.1f} frames/s  -> {t_ours / t_cache:.1f}x realtime decode (target >= 10x)",
        "",
    ]
    print("\n".join(lines))
    out = Path(__file__).with_name("RESULTS.md")
    with open(out, "a") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
