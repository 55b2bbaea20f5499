"""The one engine for test results: cells with t-intervals over seeds and bootstrap intervals over images.

Finalize (each model's K retrained seeds, their ensembles), evaluate (each model per source and
condition) and the model card all score P(fake) here, through `score`. Two sources of variation are
reported apart because they answer different questions: the t-interval over seeds says how much a
training run's luck moves a number; the bootstrap over the images says how much the particular images do.
Every predictor scored in one call is scored on the same resamples, which makes comparisons paired, and
the resamples are seeded by the images' content (`resamples_for`), so the same images get the same
intervals in finalize and in evaluate. Each metric's resampled values come from its own entry in
tune.metrics.classification (its counts or its `resample` function): adding a metric is one entry.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from scipy import stats as sst

from tune.metrics.cells import Cell, PairedTest
from tune.metrics.classification import METRICS, Resampled, ThresholdRule, binary_metrics

RESAMPLES = 1000
SEED = 0  # the fixed part of every generator's seed: the same images give the same intervals every time
CHUNK = 100  # resamples drawn at a time, so memory stays at CHUNK x images
LEVEL, ALPHA = 0.95, 0.05
K = TypeVar("K", bound=Hashable)
Samples = dict[str, np.ndarray]  # "RULE/accuracy", ... for threshold metrics, "auc", ... for ranking ones


@dataclass(frozen=True)
class Predictor:
    """P(fake) of one predictor on a set of images: one row per retrained seed (or one row), each row's threshold
    under each threshold rule (tune.metrics.classification.THRESHOLD_RULES)."""

    probs: np.ndarray  # (rows, images)
    thresholds: dict[ThresholdRule, list[float]]  # rule -> one threshold per row
    over_seeds: bool = True  # the rows are retrainings: their spread is a t-interval (False: one model)


def key(rule: str, metric: str) -> str:
    """The samples' key of a metric under a threshold rule; ranking metrics have no threshold."""
    return metric if METRICS[metric].ranking else f"{rule}/{metric}"


def t_interval(values: list[float], level: float = LEVEL) -> tuple[float, float]:
    """(mean, half-width) of the Student-t interval; half-width NaN with a single seed."""
    v = np.asarray(values, dtype=np.float64)
    mean = float(v.mean())
    if len(v) < 2:
        return mean, math.nan
    return mean, float(sst.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


def stratified_indices(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n resamples (rows) of image indices, drawn with replacement within each class.

    Stratifying keeps both classes in every resample (AUC is undefined otherwise, which matters on small test
    sets) and keeps the class balance of the real images."""
    parts = [rng.choice(np.flatnonzero(y == c), size=(n, int((y == c).sum())), replace=True) for c in (1, 0)
             if (y == c).any()]
    return np.concatenate(parts, axis=1)


def resamples_for(fingerprint: str, seed: int = SEED) -> np.random.Generator:
    """The generator of the resamples of one set of images, seeded by their content fingerprint."""
    return np.random.default_rng([seed, int(fingerprint, 16)])


def bootstrap(y: np.ndarray, predictors: dict[K, Predictor], *, rng: np.random.Generator,
              resamples: int = RESAMPLES) -> dict[K, Samples]:
    """Every metric of every predictor on the same `resamples` stratified resamples, each resample's value averaged
    over the predictor's rows. Ranking metrics are NaN when the images have one class only."""
    both = len(np.unique(y)) == 2
    parts: dict[K, dict[str, list[np.ndarray]]] = {k: {} for k in predictors}
    for start in range(0, resamples, CHUNK):
        idx = stratified_indices(y, min(CHUNK, resamples - start), rng)
        for k, pred in predictors.items():
            rows = []
            for r, p in enumerate(pred.probs):
                res, got = Resampled(y, p, idx), {}
                for rule, thresholds in pred.thresholds.items():
                    counts = res.counts(thresholds[r])
                    got |= {key(rule, m.name): m.from_counts(counts) for m in METRICS.values() if not m.ranking}
                with np.errstate(invalid="ignore", divide="ignore"):
                    got |= {m.name: m.resample(res) if both else np.full(len(idx), np.nan)
                            for m in METRICS.values() if m.ranking and m.resample}
                rows.append(got)
            for name in rows[0]:
                parts[k].setdefault(name, []).append(np.mean([row[name] for row in rows], axis=0))
    return {k: {name: np.concatenate(v) for name, v in got.items()} for k, got in parts.items()}


def percentile_interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float | None, float | None]:
    if np.isnan(samples).all():
        return None, None
    lo, hi = np.nanpercentile(samples, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def cells(y: np.ndarray, pred: Predictor, samples: Samples) -> dict[ThresholdRule, dict[str, Cell]]:
    """{rule: {metric: Cell}}: each row's metric at its threshold (binary_metrics), their mean with its t-interval
    over seeds, and the bootstrap interval over the images."""
    out: dict[ThresholdRule, dict[str, Cell]] = {}
    for rule, thresholds in pred.thresholds.items():
        rows = [binary_metrics(y, p, t) for p, t in zip(pred.probs, thresholds)]
        out[rule] = {}
        for m in METRICS:
            values = [float(r[m]) for r in rows]
            mean, half = t_interval(values) if pred.over_seeds else (float(np.mean(values)), math.nan)
            lo, hi = percentile_interval(samples[key(rule, m)])
            defined = math.isfinite(mean)
            out[rule][m] = Cell(mean if defined else None, lo if defined else None, hi if defined else None,
                                half if math.isfinite(half) else None, tuple(values) if pred.over_seeds else ())
    return out


def score(y: np.ndarray, predictors: dict[K, Predictor], *, fingerprint: str, seed: int = SEED,
          resamples: int = RESAMPLES) -> tuple[dict[K, dict[ThresholdRule, dict[str, Cell]]], dict[K, Samples]]:
    """Cells of every predictor on one set of images, and the samples behind them (for paired tests)."""
    samples = bootstrap(y, predictors, rng=resamples_for(fingerprint, seed), resamples=resamples)
    return {k: cells(y, p, samples[k]) for k, p in predictors.items()}, samples


def paired_p_value(boot_a: np.ndarray, boot_b: np.ndarray, observed: float) -> float:
    """Two-sided p-value for "A and B score the same" from paired bootstrap differences.

    The resampled differences, shifted to centre on zero, stand in for the null distribution; p is the share
    at least as far from zero as the observed difference (+1 smoothing so it is never reported as exactly 0
    from a finite number of resamples)."""
    d = boot_a - boot_b
    extreme = np.abs(d - d.mean()) >= abs(observed) - 1e-12
    return float((1 + extreme.sum()) / (1 + len(d)))


def paired(a: Cell, b: Cell, samples_a: np.ndarray, samples_b: np.ndarray) -> PairedTest | None:
    """A's value minus B's with its paired bootstrap p and whether it is significant (None when undefined)."""
    if a.value is None or b.value is None:
        return None
    diff = a.value - b.value
    p = paired_p_value(samples_a, samples_b, diff)
    return PairedTest(diff, p, bool(p < ALPHA))
