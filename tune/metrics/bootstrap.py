"""Uncertainty for the final comparison: t-intervals over seeds, bootstrap over test images.

Two sources of variation are reported separately because they answer different questions:
the t-interval over seeds says how much the training run's luck moves a number; the bootstrap
over test images says how much the particular test set does. The paired bootstrap test asks
whether two models differ by more than the test set's luck, scoring both on the same resamples.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any, TypeVar

import numpy as np
from scipy import stats as sst

from tune.metrics.classification import METRICS, binary_metrics

RESAMPLES = 1000
SEED = 0  # a fixed numpy seed: the same run gives the same intervals every time
CHUNK = 100  # resamples drawn at a time, so memory stays at CHUNK x test size
BOOT_METRICS = ("accuracy", "precision", "recall", "f1", "auc")
ALL_METRICS = tuple(METRICS)  # every declared metric, per seed
K = TypeVar("K", bound=Hashable)


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """(mean, half-width) of the Student-t interval; half-width NaN with a single seed."""
    v = np.asarray(values, dtype=np.float64)
    mean = float(v.mean())
    if len(v) < 2:
        return mean, math.nan
    half = float(sst.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return mean, half


def per_seed_metrics(y: np.ndarray, probs: np.ndarray, thresholds: list[float]) -> dict[str, list[float]]:
    """binary_metrics for each seed's test probabilities (rows of `probs`) at that seed's threshold."""
    rows = [binary_metrics(y, p, t) for p, t in zip(probs, thresholds)]
    return {m: [float(r[m]) for r in rows] for m in ALL_METRICS}


def stratified_indices(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n resamples (rows) of test indices, drawn with replacement within each class.

    Stratifying keeps both classes in every resample (AUC is undefined otherwise, which matters
    on small test sets) and keeps the class balance of the real test set.
    """
    parts = [rng.choice(np.flatnonzero(y == c), size=(n, int((y == c).sum())), replace=True) for c in (1, 0)]
    return np.concatenate(parts, axis=1)


def resampled_metrics(y: np.ndarray, p: np.ndarray, idx: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """binary_metrics' accuracy, precision, recall, F1 and ROC-AUC on every resample at once.

    Vectorised because 1000 resamples x seeds x models through scikit-learn take minutes;
    tests check that it agrees with tune.metrics.classification.binary_metrics.
    """
    yy, pp = y[idx].astype(bool), p[idx]
    pred = pp >= threshold
    tp = (pred & yy).sum(1)
    fp = (pred & ~yy).sum(1)
    fn = (~pred & yy).sum(1)
    n = idx.shape[1]
    zeros = np.zeros(len(idx))
    precision = np.divide(tp, tp + fp, out=zeros.copy(), where=(tp + fp) > 0)
    recall = np.divide(tp, tp + fn, out=zeros.copy(), where=(tp + fn) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=zeros.copy(), where=(precision + recall) > 0)
    # ROC-AUC as the Mann-Whitney statistic: ties between a fake and a real count one half.
    ranks = sst.rankdata(pp, axis=1)
    n_pos = yy.sum(1)
    n_neg = n - n_pos
    auc = ((ranks * yy).sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return {"accuracy": (n - fp - fn) / n, "precision": precision, "recall": recall, "f1": f1, "auc": auc}


def bootstrap(y: np.ndarray, models: dict[K, tuple[np.ndarray, list[float]]], *, resamples: int = RESAMPLES,
              seed: int = SEED) -> dict[K, dict[str, np.ndarray]]:
    """For each model (probs (seeds, n), thresholds per seed): each metric on each resample, averaged over seeds.

    All models are scored on the same resamples, which is what makes the comparison paired.
    """
    rng = np.random.default_rng(seed)
    out = {name: {m: np.empty(resamples) for m in BOOT_METRICS} for name in models}
    for start in range(0, resamples, CHUNK):
        idx = stratified_indices(y, min(CHUNK, resamples - start), rng)
        for name, (probs, thresholds) in models.items():
            per_seed = [resampled_metrics(y, p, idx, t) for p, t in zip(probs, thresholds)]
            for m in BOOT_METRICS:
                out[name][m][start:start + len(idx)] = np.mean([s[m] for s in per_seed], axis=0)
    return out


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    lo, hi = np.nanpercentile(samples, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def metric_cells(per_seed: dict[str, list[float]], boot: dict[str, np.ndarray], *,
                 over_seeds: bool = True) -> dict[str, dict[str, Any]]:
    """A comparison cell per metric: the mean over seeds ± its t half-width, and the bootstrap interval over test
    images (metrics the bootstrap has). One predictor (over_seeds=False: an ensemble, or one seed picked out) has
    no interval over seeds: its t fields are None, shown as "n/a", never a made-up number."""
    cells: dict[str, dict[str, Any]] = {}
    for m, values in per_seed.items():
        if over_seeds:
            mean, half = t_interval(values)
            cells[m] = {"mean": mean, "t_half": half, "t_low": mean - half, "t_high": mean + half, "per_seed": values}
        else:
            cells[m] = {"mean": float(np.mean(values)), "t_half": None, "t_low": None, "t_high": None}
        if m in boot:
            cells[m]["boot_low"], cells[m]["boot_high"] = percentile_interval(boot[m])
    return cells


def paired_p_value(boot_a: np.ndarray, boot_b: np.ndarray, observed: float) -> float:
    """Two-sided p-value for "A and B score the same" from paired bootstrap differences.

    The resampled differences, shifted to centre on zero, stand in for the null distribution;
    p is the share at least as far from zero as the observed difference (+1 smoothing so it is
    never reported as exactly 0 from a finite number of resamples).
    """
    d = boot_a - boot_b
    extreme = np.abs(d - d.mean()) >= abs(observed) - 1e-12
    return float((1 + extreme.sum()) / (1 + len(d)))


def resampled_ranking_metrics(y: np.ndarray, p: np.ndarray, idx: np.ndarray) -> dict[str, np.ndarray]:
    """Average precision and EER on every resample at once, as metrics.classification computes them (scikit-learn).

    Each row is sorted by score; tied scores form one threshold (one ROC / precision-recall point),
    as in scikit-learn. Only meaningful when every resample holds both classes (stratified_indices).
    """
    pp, yy = p[idx], y[idx].astype(bool)
    order = np.argsort(-pp, axis=1, kind="stable")
    ps, ys = np.take_along_axis(pp, order, 1), np.take_along_axis(yy, order, 1)
    tp, fp = np.cumsum(ys, 1), np.cumsum(~ys, 1)
    end = np.ones_like(ys)  # the last position of each group of tied scores: a threshold
    end[:, :-1] = ps[:, :-1] != ps[:, 1:]
    # At each position, the counts at the last threshold seen so far (counts only grow, so cummax fills forward).
    tp_end = np.maximum.accumulate(np.where(end, tp, 0), 1)
    fp_end = np.maximum.accumulate(np.where(end, fp, 0), 1)
    n_pos, n_neg = tp[:, -1:], fp[:, -1:]
    prev_tp = np.concatenate([np.zeros_like(tp[:, :1]), tp_end[:, :-1]], 1)
    # AP = sum over thresholds of (recall gained) x (precision there), scikit-learn's step rule.
    ap = (np.where(end, tp - prev_tp, 0) * tp / (tp + fp)).sum(1) / n_pos[:, 0]
    # EER: the first ROC point (from (0, 0)) where FNR <= FPR, interpolated from the point before it.
    # Positions inside a tie group repeat the previous threshold's point, which leaves the curve unchanged.
    fpr = np.concatenate([np.zeros((len(idx), 1)), fp_end / n_neg], 1)
    fnr = 1 - np.concatenate([np.zeros((len(idx), 1)), tp_end / n_pos], 1)
    i = np.argmax(fnr <= fpr, axis=1)[:, None]
    f0, f1 = np.take_along_axis(fpr, i - 1, 1)[:, 0], np.take_along_axis(fpr, i, 1)[:, 0]
    d0 = np.take_along_axis(fnr - fpr, i - 1, 1)[:, 0]
    d1 = np.take_along_axis(fnr - fpr, i, 1)[:, 0]
    t = np.divide(d0, d0 - d1, out=np.zeros_like(d0), where=d0 != d1)
    return {"ap": ap, "eer": f0 + t * (f1 - f0)}
