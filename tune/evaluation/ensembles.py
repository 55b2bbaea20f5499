"""Ensembles and flip test-time augmentation (TTA) of finalize's retrained models.

finalize retrains each model (an architecture's best trial, or its baseline recipe) with K seeds and
exports the seed with the best valid score. The same K models can also predict together, and each can
look at an image twice (as it is and mirrored left-right). Per model, the five predictors of VARIANTS
are scored on the test split, the exported seed alone being the reference.

Nothing here is chosen on test. Each predictor's valid-chosen threshold is Youden's J on its own VALID
probabilities (every seed saved them, plain and flipped); the seeds and the chosen seed keep the
thresholds finalize recorded. A predictor made of K seeds gets finalize's t-interval over seeds; the
chosen seed and an ensemble are one model each and have none ("n/a"). All get the bootstrap interval over
test images on the same resamples (tune.metrics.bootstrap.bootstrap), and a paired bootstrap against the chosen seed
on AUC and accuracy.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tune.core import UserError, atomic_write_text
from tune.inference import load, probabilities
from tune.metrics import bootstrap as stats
from tune.metrics.bootstrap import Predictor
from tune.metrics.classification import AT_HALF, AT_VALID, HEADLINE, ThresholdRule, youden_threshold
from tune.runs.comparison import Cells, Ensembles, ModelRow, VariantRow, Versus
from tune.training.records import (
    FLIPPED,
    PLAIN,
    PREDICTIONS,
    VALID_PREDICTIONS,
    WEIGHTS,
    prediction_columns,
    predictions_csv,
    read_predictions,
)

if TYPE_CHECKING:
    from tune.data.images import ImageSet
    from tune.models.detector import Detector

VARIANTS = {
    "chosen_seed": "the exported seed alone (best valid score), the reference",
    "seeds": "each seed alone, metric averaged over the seeds (the main table's row)",
    "seeds_hflip": "each seed with flip TTA (P = mean of P(fake) of the image and of its mirror image), metric "
                   "averaged over the seeds",
    "ensemble": "one predictor: P = mean of the seeds' P(fake)",
    "ensemble_hflip": "one predictor: P = mean over the seeds of each seed's flip-TTA P(fake)",
}
OVER_SEEDS = ("seeds", "seeds_hflip")  # the predictors with a t-interval over seeds
PAIRED = HEADLINE[::-1]  # the metrics of the paired test against the chosen seed (AUC first, as ever in the files)


def save_scores(out: Path, model: Detector, valid: ImageSet, test: ImageSet,
                p_test: np.ndarray | None = None) -> np.ndarray:
    """P(fake) of every valid and test image, as it is and flipped, into a seed's folder; returns the plain test
    P. `p_test`: the plain test P already saved (an older seed folder keeps the numbers its record was made of)."""
    p_test = probabilities(model, test.x) if p_test is None else p_test
    atomic_write_text(out / VALID_PREDICTIONS, predictions_csv(valid, probabilities(model, valid.x),
                                                               probabilities(model, valid.x, hflip=True)))
    atomic_write_text(out / PREDICTIONS, predictions_csv(test, p_test, probabilities(model, test.x, hflip=True)))
    return p_test


def add_missing_scores(out: Path, threads: int, valid: ImageSet, test: ImageSet) -> bool:
    """A seed folder finished by a finalize from before flip TTA has no flipped and no valid predictions: score
    them with its saved weights (no retraining), on the thread count it trained with. Returns whether any
    were missing."""
    test_file = out / PREDICTIONS
    if (out / VALID_PREDICTIONS).is_file() and test_file.is_file() and FLIPPED in prediction_columns(test_file):
        return False

    if threads > 0:
        torch.set_num_threads(threads)
    saved = read_predictions(test_file)[2] if test_file.is_file() else None
    save_scores(out, load(out / WEIGHTS).model, valid, test, saved)
    return True


def _relative(paths: list[str]) -> list[str]:
    """Paths relative to their common folder: the same images still match after the dataset moved (the run's
    fingerprints have already said the content is the same)."""
    root = os.path.commonpath(paths) if len(paths) > 1 else ""
    return [os.path.relpath(p, root) if root else os.path.basename(p) for p in paths]


def read_scores(folder: Path, file: str, images: ImageSet) -> np.ndarray:
    """(2, n): the plain and the flipped P(fake) a seed saved for one split, checked against that split."""
    paths, labels, plain = read_predictions(folder / file, PLAIN)
    if _relative(paths) != _relative(images.paths) or not np.array_equal(labels, images.y.astype(int)):
        raise UserError(f"{folder / file} does not match the {images.split} split (the data changed since)")
    return np.stack([plain, read_predictions(folder / file, FLIPPED)[2]])


def predictors(folders: list[Path], recorded: list[float], chosen: int, valid: ImageSet,
               test: ImageSet) -> dict[str, Predictor]:
    """Every predictor of one model, from its seeds' folders (in seed order), the thresholds finalize recorded
    for them and the position of the chosen seed. The chosen seed comes first: the others are paired with it."""
    v = np.stack([read_scores(f, VALID_PREDICTIONS, valid) for f in folders])  # (seeds, plain/flipped, n_valid)
    t = np.stack([read_scores(f, PREDICTIONS, test) for f in folders])
    v_tta, t_tta = v.mean(1), t.mean(1)  # flip TTA: the mean of the plain and the flipped probability

    def youden(p: np.ndarray) -> float:
        return youden_threshold(valid.y, p)

    def predictor(test: np.ndarray, thresholds: list[float], variant: str) -> Predictor:
        return Predictor(test, {AT_HALF: [0.5] * len(thresholds), AT_VALID: thresholds},
                         over_seeds=variant in OVER_SEEDS)

    return {
        "chosen_seed": predictor(t[[chosen], 0], [recorded[chosen]], "chosen_seed"),
        "seeds": predictor(t[:, 0], recorded, "seeds"),
        "seeds_hflip": predictor(t_tta, [youden(p) for p in v_tta], "seeds_hflip"),
        "ensemble": predictor(t[:, 0].mean(0, keepdims=True), [youden(v[:, 0].mean(0))], "ensemble"),
        "ensemble_hflip": predictor(t_tta.mean(0, keepdims=True), [youden(v_tta.mean(0))], "ensemble_hflip"),
    }


def label(variant: str, seeds: list[int], chosen_seed: int) -> str:
    """How a table names the predictor."""
    k = len(seeds)
    return {"chosen_seed": f"chosen seed (seed {chosen_seed}, exported)", "seeds": f"{k} seeds, each alone",
            "seeds_hflip": f"{k} seeds, each alone + flip TTA", "ensemble": f"ensemble of {k} seeds",
            "ensemble_hflip": f"ensemble of {k} seeds + flip TTA"}[variant]


def rows(model: ModelRow, preds: dict[str, Predictor], cells: dict[Any, Cells],
         samples: dict[Any, dict[str, np.ndarray]]) -> list[VariantRow]:
    """The table's rows of one model (`model`: its row of the main table): each predictor's cells under every
    threshold rule and, but for the chosen seed, its paired test against the chosen seed (PAIRED metrics)."""
    name, out = model.name, []
    ref = cells[name, "chosen_seed"]
    for variant, pred in preds.items():
        mine = cells[name, variant]

        def vs(rule: ThresholdRule, m: str, mine: Cells = mine, variant: str = variant) -> Versus:
            k = stats.key(rule, m)
            test = stats.paired(mine[rule][m], ref[rule][m], samples[name, variant][k], samples[name, "chosen_seed"][k])
            return Versus(mine[rule][m].value, ref[rule][m].value, test)

        out.append(VariantRow(
            model.model, name, model.arch, model.kind, model.seeds, model.chosen_seed, variant,
            label(variant, model.seeds, model.chosen_seed), pred.thresholds[AT_VALID], mine,
            None if variant == "chosen_seed" else {rule: {m: vs(rule, m) for m in PAIRED}
                                                   for rule in pred.thresholds}))
    return out


def section(rows: list[VariantRow]) -> Ensembles:
    """comparison.json's `ensembles`: every model's predictors, paired against the chosen seed."""
    return Ensembles(dict(VARIANTS), "chosen_seed", list(PAIRED), rows)
