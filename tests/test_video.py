import os

import numpy as np
import pytest

from tempsamp.data.synthetic import SynthVideo, write_video
from tempsamp.data.video import VideoDecodeError, VideoParams, decode_video

PARAMS = [
    VideoParams(),  # training defaults, Qwen3.x patch 16
    VideoParams(patch_size=14),  # Qwen2.x
    VideoParams(fps=1.0, max_frames=8, min_pixels=3136, max_pixels=6272, patch_size=14),  # demo
    VideoParams(fps=4.0, max_frames=0, min_pixels=65536, total_pixels=14_680_064),  # eval-like, no cap
    VideoParams(fps=2.0, min_frames=4, max_frames=16, max_pixels=20000, total_pixels=100_000),
]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("vids")
    specs = [(320, 180, 30, 6.0), (128, 96, 25, 10.0), (96, 160, 12, 3.0), (640, 360, 24, 4.0)]
    out = []
    for i, (w, h, fps, dur) in enumerate(specs):
        p = str(d / f"v{i}.mp4")
        write_video(SynthVideo(video_id=str(i), path=p, duration=dur, fps=fps, width=w, height=h, start=1.0,
                               end=2.0, query="q"), (255, 0, 0), "square", i)
        out.append(p)
    return out


@pytest.mark.parametrize("pi", range(len(PARAMS)))
def test_parity_with_qwen_vl_utils(videos, pi):
    from qwen_vl_utils import fetch_video

    params = PARAMS[pi]
    for path in videos:
        ref, ref_meta = fetch_video(params.qwen_ele(path), image_patch_size=params.patch_size,
                                    return_video_metadata=True)
        ours = decode_video(path, params)
        assert ours.frames.dtype == np.uint8 and ours.frames.shape[-1] == 3
        assert ours.meta.frame_indices == ref_meta["frames_indices"], path
        assert ours.frames.shape[0] == ref.shape[0]
        assert ours.frames.shape[1:3] == tuple(ref.shape[2:4]), (path, params)
        assert ours.meta.total_num_frames == ref_meta["total_num_frames"]
        # same filter family: pixel values close to the float reference
        diff = np.abs(ours.frames.astype(np.float32) - ref.permute(0, 2, 3, 1).numpy().clip(0, 255))
        assert diff.mean() < 2.0


def test_metadata(videos):
    s = decode_video(videos[1], VideoParams(fps=2.0))
    m = s.meta
    assert m.source_fps == pytest.approx(25.0) and m.total_num_frames == 250
    assert m.duration == pytest.approx(10.0) and m.sample_fps == pytest.approx(2.0)
    assert m.timestamps[1] == pytest.approx(m.frame_indices[1] / 25.0)
    hf = m.hf_metadata()
    assert hf["frames_indices"] == m.frame_indices and hf["fps"] == m.source_fps and hf["duration"] == 10.0


def test_bad_videos(tmp_path):
    with pytest.raises(VideoDecodeError, match=r"nope\.mp4: video file not found"):
        decode_video(tmp_path / "nope.mp4", VideoParams())
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoDecodeError, match=r"empty\.mp4: video file is empty"):
        decode_video(empty, VideoParams())
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(VideoDecodeError, match=r"junk\.mp4: cannot open video"):
        decode_video(junk, VideoParams())


def test_truncated_video(videos, tmp_path):
    data = open(videos[0], "rb").read()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(VideoDecodeError, match=r"cut\.mp4"):
        decode_video(cut, VideoParams())
