"""Finalize's video-level comparison: each model's test videos scored by aggregating its frames' P(fake) (its own
video_agg), with the same cells as the frame-level table (mean over seeds ± t [bootstrap interval over test videos,
stratified by class]). The valid threshold is Youden's J on the valid videos' aggregated P(fake)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tune.evaluation.ensembles import read_scores
from tune.metrics import bootstrap as stats
from tune.metrics.bootstrap import Predictor
from tune.metrics.classification import AT_HALF, AT_VALID, youden_threshold
from tune.metrics.video import by_video
from tune.runs.comparison import ModelRow, VideoRow, Videos
from tune.training.records import PREDICTIONS, VALID_PREDICTIONS

if TYPE_CHECKING:
    from tune.data.images import ImageSet
    from tune.training.config import TrainConfig

ABOUT = ("Per video: each test video's P(fake) is its frames' P(fake) aggregated by the model's video_agg (mean, "
         "max, or the mean of the top k); cells as above, the bootstrap resampling test videos.")


def aggregation(cfg: TrainConfig) -> str:
    return f"top {cfg.video_topk} mean" if cfg.video_agg == "topk" else str(cfg.video_agg)


def video_predictor(cfg: TrainConfig, folders: list[Path], valid: ImageSet, test: ImageSet) -> Predictor:
    """The model's seeds as one predictor of test videos (rows: seeds), from the seeds' saved frame scores."""
    def per_video(images: ImageSet, p: np.ndarray) -> Any:
        return by_video(images.y, p, images.videos or [], cfg.video_agg, cfg.video_topk)

    t = np.stack([per_video(test, read_scores(f, PREDICTIONS, test)[0]).p for f in folders])
    thresholds = []
    for f in folders:
        v = per_video(valid, read_scores(f, VALID_PREDICTIONS, valid)[0]) if valid.videos else None
        both = v is not None and len(np.unique(v.y)) == 2
        thresholds.append(youden_threshold(v.y, v.p) if both else 0.5)
    return Predictor(t, {AT_HALF: [0.5] * len(folders), AT_VALID: thresholds})


def section(models: list[tuple[ModelRow, TrainConfig, list[Path]]], valid: ImageSet,
            test: ImageSet) -> Videos | None:
    """comparison.json's `video` block: per model (its comparison row, config and seed folders) its cells on the
    test videos; None when the test split holds no video."""
    if not test.videos or not any(test.videos):
        return None
    vids = by_video(test.y, test.y, test.videos)
    preds = {row.name: video_predictor(cfg, folders, valid, test) for row, cfg, folders in models}
    cells, _ = stats.score(vids.y.astype(int), preds, fingerprint=test.fingerprint)
    rows = [VideoRow(row.model, row.name, row.kind, aggregation(cfg), cells[row.name]) for row, cfg, _ in models]
    return Videos(len(vids), int(vids.frames.sum()), ABOUT, rows)
