"""Classification metrics as pure functions of (labels, P(fake)). Positive class: Fake = 1."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, precision, recall, F1 at `threshold`, plus ROC-AUC, average precision and EER."""
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=np.float64)
    pred = (p >= threshold).astype(int)
    tp = int(((pred == 1) & (y == 1)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    both = len(np.unique(y)) == 2
    return {
        "accuracy": (tp + tn) / len(y) if len(y) else math.nan,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "auc": float(roc_auc_score(y, p)) if both else math.nan,
        "ap": float(average_precision_score(y, p)) if both else math.nan,
        "eer": equal_error_rate(y, p) if both else math.nan,
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
    }


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
