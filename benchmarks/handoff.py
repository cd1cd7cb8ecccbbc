"""Hand-off benchmark: decode once and share the ObjectRef (ours) vs decode in both the rollout and
the learner (the original's path), on Ray with the training video parameters. Reports the learner's
per-video time to get its frames, and the total decode work. Appends to RESULTS.md.

    python benchmarks/handoff.py [--videos 6]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import append_results, stamp, workdir  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=6)
    a = ap.parse_args()
    import ray

    from tempsamp.data.synthetic import SynthVideo, write_video
    from tempsamp.data.video import VideoParams, decode_video
    from tempsamp.cluster import init_ray

    work = workdir("handoff")
    paths = []
    for i in range(a.videos):
        p = str(work / f"v{i}.mp4")
        write_video(SynthVideo(video_id=str(i), path=p, duration=30.0, fps=30, width=640, height=360,
                               start=5.0, end=12.0, query="q"), (50, 200, 50), "circle", i)
        paths.append(p)
    params = VideoParams()

    @ray.remote(num_cpus=0.5)
    class Consumer:
        """Stands in for a rollout engine or a learner rank: it needs the frames of each video."""

        def frames_from_ref(self, wrapped: list) -> tuple[float, int]:
            t = time.perf_counter()
            s = ray.get(wrapped[0])
            return time.perf_counter() - t, int(s.frames.shape[0])

        def frames_by_decoding(self, path: str) -> tuple[float, int]:
            t = time.perf_counter()
            s = decode_video(path, params)
            return time.perf_counter() - t, int(s.frames.shape[0])

    @ray.remote(num_cpus=0.5)
    class Decoder:
        def decode(self, path: str):
            return decode_video(path, params)

    init_ray(num_cpus=2)
    try:
        rollout, learner, dec = Consumer.remote(), Consumer.remote(), Decoder.remote()
        ray.get([rollout.frames_by_decoding.remote(paths[0]), learner.frames_by_decoding.remote(paths[0])])  # warm
        # ours: one decode per video, the ref goes to both
        t0 = time.perf_counter()
        refs = [dec.decode.remote(p) for p in paths]
        ray.wait(refs, num_returns=len(refs))
        t_decode = time.perf_counter() - t0
        ours_roll = ray.get([rollout.frames_from_ref.remote([r]) for r in refs])
        ours_learn = ray.get([learner.frames_from_ref.remote([r]) for r in refs])
        # original: rollout decodes, learner decodes again
        orig_roll = ray.get([rollout.frames_by_decoding.remote(p) for p in paths])
        orig_learn = ray.get([learner.frames_by_decoding.remote(p) for p in paths])
    finally:
        ray.shutdown()
    frames = sum(n for _, n in ours_learn)
    ol = sum(t for t, _ in ours_learn) / len(paths)
    gl = sum(t for t, _ in orig_learn) / len(paths)
    append_results([
        stamp("handoff"),
        f"{a.videos} videos (30 s, 640x360, 30 fps; training params), {frames} frames to the learner",
        f"- original path: learner decodes again: {1000 * gl:8.1f} ms/video; decodes per video: 2 "
        f"(rollout {1000 * sum(t for t, _ in orig_roll) / len(paths):.1f} ms + learner)",
        f"- ours: learner reads the ObjectRef: {1000 * ol:8.2f} ms/video; decodes per video: 1 "
        f"({1000 * t_decode / len(paths):.1f} ms/video wall in the decode pool, overlapped with other stages)",
        f"- learner video time: {gl / max(ol, 1e-9):.0f}x less with decode-once "
        f"(target: the decode stage disappears from the learner's time)",
    ])


if __name__ == "__main__":
    main()
