"""Non-linear reward shaping (the original `transform_rewards`), on the IoU term only.

iou >= t: t + 0.01 * log(iou - t + 1)                 (compresses the top)
iou <  t: t - (exp(alpha * (t - iou)) - 1) / (exp(alpha) - 1)   (amplifies gaps at the bottom)
"""

from __future__ import annotations

import numpy as np


def transform_rewards(iou, threshold: float = 0.8, alpha: float = 1.0) -> np.ndarray:
    x = np.asarray(iou, dtype=np.float64)
    t = float(threshold)
    if alpha <= 0:
        raise ValueError(f"shaping alpha must be > 0, got {alpha}")
    high = t + 0.01 * np.log(np.maximum(x - t, 0.0) + 1.0)
    low = t - (np.exp(alpha * (t - np.minimum(x, t))) - 1.0) / (np.exp(alpha) - 1.0)
    return np.where(x >= t, high, low)


def shaped_scores(iou, fmt, format_weight: float = 0.1, shaping: bool = False,
                  threshold: float = 0.8, alpha: float = 1.0) -> np.ndarray:
    """Final per-row score: (shaped) iou + format_weight * format."""
    iou = np.asarray(iou, dtype=np.float64)
    term = transform_rewards(iou, threshold, alpha) if shaping else iou
    return term + format_weight * np.asarray(fmt, dtype=np.float64)
