"""Classification metrics, declared once: name, direction, function. Positive class: Fake = 1.

Everything else looks metrics up here: a trial reports `val_NAME` for every metric below, a search
space may optimise any of them, and "which is better" is `better()`. Adding a metric is one entry.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


@dataclass(frozen=True)
class Counts:
    tp: int
    fp: int
    fn: int
    tn: int


def _div(a: float, b: float) -> float:
    return a / b if b else 0.0


def _precision(c: Counts) -> float:
    return _div(c.tp, c.tp + c.fp)


def _recall(c: Counts) -> float:
    return _div(c.tp, c.tp + c.fn)


def _f1(c: Counts) -> float:
    p, r = _precision(c), _recall(c)
    return _div(2 * p * r, p + r)


@dataclass(frozen=True)
class Metric:
    name: str
    mode: str  # "max" or "min": which direction is better
    label: str
    # threshold metrics read the confusion counts; ranking metrics read (labels, scores) and need both classes
    from_counts: Callable[[Counts], float] | None = None
    from_scores: Callable[[np.ndarray, np.ndarray], float] | None = None


def equal_error_rate(y: np.ndarray, p: np.ndarray) -> float:
    """The error rate where false-positive and false-negative rates cross (linear interpolation)."""
    fpr, tpr, _ = roc_curve(y, p)
    fnr = 1 - tpr
    i = int(np.argmin(fnr > fpr))  # first point where fnr <= fpr
    if i == 0:
        return float(fpr[0])
    d0, d1 = fnr[i - 1] - fpr[i - 1], fnr[i] - fpr[i]
    t = d0 / (d0 - d1) if d0 != d1 else 0.0
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("accuracy", "max", "Accuracy", from_counts=lambda c: _div(c.tp + c.tn, c.tp + c.fp + c.fn + c.tn)),
    Metric("precision", "max", "Precision", from_counts=_precision),
    Metric("recall", "max", "Recall", from_counts=_recall),
    Metric("f1", "max", "F1-Score", from_counts=_f1),
    Metric("auc", "max", "ROC-AUC", from_scores=lambda y, p: float(roc_auc_score(y, p))),
    Metric("ap", "max", "Average precision", from_scores=lambda y, p: float(average_precision_score(y, p))),
    Metric("eer", "min", "EER", from_scores=equal_error_rate),
)}
LOSS = Metric("loss", "min", "BCE loss")  # computed from logits by the training loop


def search_metrics() -> dict[str, str]:
    """Every per-epoch validation number a search may optimise, with its direction."""
    return {"val_loss": LOSS.mode, **{f"val_{m.name}": m.mode for m in METRICS.values()}}


def mode_of(name: str) -> str:
    """Direction of `name`, with or without the val_/best_ prefixes."""
    base = name.removeprefix("best_").removeprefix("val_")
    return LOSS.mode if base == "loss" else METRICS[base].mode


def better(a: float, b: float, mode: str) -> bool:
    """True when `a` beats `b` in `mode` ("max" or "min"); NaN never wins, anything beats NaN."""
    if a != a:
        return False
    if b != b:
        return True
    return a > b if mode == "max" else a < b


def best_index(values: list[float], mode: str) -> int | None:
    """Position of the best value in `mode` (the first on ties); None when none is a number."""
    best = None
    for i, v in enumerate(values):
        if isinstance(v, (int, float)) and (best is None or better(v, values[best], mode)):
            best = i
    return None if best is None or values[best] != values[best] else best


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Every declared metric at `threshold` (ranking metrics NaN unless both classes are present),
    plus the confusion counts tp, fp, fn, tn."""
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=np.float64)
    pred = (p >= threshold).astype(int)
    c = Counts(tp=int(((pred == 1) & (y == 1)).sum()), fp=int(((pred == 1) & (y == 0)).sum()),
               fn=int(((pred == 0) & (y == 1)).sum()), tn=int(((pred == 0) & (y == 0)).sum()))
    both = len(np.unique(y)) == 2
    out: dict[str, float] = {}
    for m in METRICS.values():
        if m.from_counts is not None:
            out[m.name] = m.from_counts(c) if len(y) else math.nan
        else:
            out[m.name] = m.from_scores(y, p) if both and m.from_scores else math.nan
    return {**out, "tp": c.tp, "fp": c.fp, "fn": c.fn, "tn": c.tn}


def youden_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The threshold maximising Youden's J = TPR - FPR (used on the validation split only)."""
    fpr, tpr, thr = roc_curve(y, p)
    j = tpr - fpr
    best = int(np.argmax(j))
    return float(min(thr[best], 1.0))


def bce_loss(y: np.ndarray, logits: np.ndarray) -> float:
    """Mean binary cross-entropy from logits, numerically stable (matches BCEWithLogitsLoss)."""
    y = np.asarray(y, dtype=np.float64)
    z = np.asarray(logits, dtype=np.float64)
    return float(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))))
