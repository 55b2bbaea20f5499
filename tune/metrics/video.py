"""Video-level scores: a video's P(fake) from its frames' P(fake), by the aggregation a search space chooses.

mean (the field's default), max (one convincing fake frame convicts the clip) or topk (the mean of the k highest:
between the two, robust to one odd frame). Rows tagged "" (still images) have no video and are left out here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tune.metrics.classification import METRICS, VIDEO, binary_metrics

AGGREGATIONS = ("mean", "max", "topk")
DEFAULT_TOPK = 3


def aggregate(p: np.ndarray, how: str = "mean", k: int = DEFAULT_TOPK) -> float:
    """One video's P(fake) from its frames' (NaN frames read as 0.5)."""
    p = np.nan_to_num(np.asarray(p, dtype=np.float64), nan=0.5)
    if how == "mean":
        return float(p.mean())
    if how == "max":
        return float(p.max())
    if how == "topk":
        return float(np.sort(p)[::-1][:max(1, k)].mean())
    raise ValueError(f"unknown aggregation {how!r} (expected one of {', '.join(AGGREGATIONS)})")


@dataclass(frozen=True)
class VideoScores:
    """Per video, in order of first appearance: its key, label, P(fake) and how many frames it had."""

    ids: list[str]
    y: np.ndarray
    p: np.ndarray
    frames: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def by_video(y: np.ndarray, p: np.ndarray, videos: list[str], how: str = "mean",
             k: int = DEFAULT_TOPK) -> VideoScores:
    """Frames' labels and P(fake) grouped by video key (every frame of a video has its label)."""
    rows: dict[str, list[int]] = {}
    for i, v in enumerate(videos):
        if v:
            rows.setdefault(v, []).append(i)
    y, p = np.asarray(y), np.asarray(p)
    return VideoScores(list(rows), np.asarray([y[r[0]] for r in rows.values()], dtype=np.float32),
                       np.asarray([aggregate(p[r], how, k) for r in rows.values()]),
                       np.asarray([len(r) for r in rows.values()]))


def video_row(y: np.ndarray, p: np.ndarray, videos: list[str] | None, how: str = "mean",
              k: int = DEFAULT_TOPK) -> dict[str, float]:
    """One epoch's video-level numbers, val_video_NAME for every declared metric ({} without videos)."""
    if not videos or not any(videos):
        return {}
    v = by_video(y, p, videos, how, k)
    m = binary_metrics(v.y, v.p)
    return {f"{VIDEO}_{name}": m[name] for name in METRICS}
