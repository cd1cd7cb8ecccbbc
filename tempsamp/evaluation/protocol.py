"""The evaluation protocol's pure parts (no Ray): the decode parameters of TimeLens-Bench and the scoring
of one reply. Shared by the Ray runner (`runner.py`) and the in-process eval (`local.py`)."""

from __future__ import annotations

import msgspec

from ..config import Config
from ..data.video import VideoParams
from .bench import BenchSample
from .metrics import Prediction, score_reply

# the original eval script's video budget in tokens; pixels = tokens x d^2, d = patch x merge of the family
EVAL_MIN_TOKENS, EVAL_FRAME_MAX_TOKENS, EVAL_TOTAL_TOKENS = 64, 768, 14336


def eval_video_params(cfg: Config, family: str) -> VideoParams:
    """The evaluation protocol's decode parameters (RECIPE.md): fps 2, no max_frames, and the
    original's token budgets in pixels of this family (d = 28 for Qwen2.x: min 50,176, total
    11,239,424; d = 32 for Qwen3.x: 65,536 and 14,680,064) unless eval.*_pixels are set."""
    e = cfg.eval
    d = VideoParams.from_config(cfg.video, family).image_factor
    video = msgspec.structs.replace(cfg.video, fps=e.fps, max_frames=e.max_frames,
                                    min_pixels=e.min_pixels or EVAL_MIN_TOKENS * d * d,
                                    max_pixels=e.max_pixels or EVAL_FRAME_MAX_TOKENS * d * d,
                                    total_pixels=e.total_pixels or EVAL_TOTAL_TOKENS * d * d)
    return VideoParams.from_config(video, family)


def make_prediction(s: BenchSample, text: str, mode: str, weight_version: int = 0) -> Prediction:
    """The scored prediction of reply `text` to bench query `s` (parse mode `mode`)."""
    span, used, iou = score_reply(text, s.gt, s.duration, mode)
    return Prediction(key=s.key, dataset=s.dataset, video=s.video, video_id=s.video_id, query=s.query, gt=s.gt,
                      duration=s.duration, text=text, span=span, eval_span=used, iou=iou, parsed=span is not None,
                      parse_mode=mode, weight_version=weight_version)
