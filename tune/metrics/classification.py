"""Classification metrics, declared once: name, direction, function. Positive class: Fake = 1.

Everything else looks metrics up here: a trial reports `val_NAME` for every metric below, a search
space may optimise any of them, and "which is better" is `better()`. Adding a metric is one entry.

With held-out validation sources (generators the model never trains on, tune/data/heldout.py) a trial also
reports `xval_NAME` (the mean over those sources, each weighing the same) and, with several sources,
`xval[SOURCE]_NAME` per source for the ranking metrics in PER_SOURCE; and a search may select by a
combination of the two, declared once in COMBINED: `mean_NAME` = (val_NAME + xval_NAME) / 2, and the
worse of the two: `min_NAME` for a metric where higher is better (min_auc = min(val_auc, xval_auc)),
`max_NAME` where lower is (max_eer). `metric_value()` reads any of these names off a per-epoch row.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from typing import Any

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


@dataclass(frozen=True)
class Counts:
    """Confusion counts: ints for one set of images, or arrays with one entry per bootstrap resample."""

    tp: Any
    fp: Any
    fn: Any
    tn: Any


def _div(a: Any, b: Any) -> Any:
    """a / b, and 0 where b is 0; elementwise for arrays."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.divide(a, b, out=np.zeros(np.broadcast(a, b).shape), where=b != 0)


def _precision(c: Counts) -> Any:
    return _div(c.tp, c.tp + c.fp)


def _recall(c: Counts) -> Any:
    return _div(c.tp, c.tp + c.fn)


def _f1(c: Counts) -> Any:
    p, r = _precision(c), _recall(c)
    return _div(2 * p * r, p + r)


class Resampled:
    """One predictor's scores on every bootstrap resample at once (a row per resample): what a ranking metric's
    `resample` function reads. Vectorised because 1000 resamples x seeds x models through scikit-learn take
    minutes; tests check every resampled metric against its scikit-learn value on the same images."""

    def __init__(self, y: np.ndarray, p: np.ndarray, idx: np.ndarray) -> None:
        self.y, self.p = y[idx].astype(bool), p[idx]

    def counts(self, threshold: float) -> Counts:
        pred = self.p >= threshold
        return Counts(tp=(pred & self.y).sum(1), fp=(pred & ~self.y).sum(1), fn=(~pred & self.y).sum(1),
                      tn=(~pred & ~self.y).sum(1))

    @cached_property
    def curve(self) -> tuple[np.ndarray, ...]:
        """Each row sorted by score; tied scores form one threshold (one ROC / precision-recall point), as in
        scikit-learn: (tp, fp, threshold ends, tp and fp at the last threshold so far, n_pos, n_neg)."""
        order = np.argsort(-self.p, axis=1, kind="stable")
        ps, ys = np.take_along_axis(self.p, order, 1), np.take_along_axis(self.y, order, 1)
        tp, fp = np.cumsum(ys, 1), np.cumsum(~ys, 1)
        end = np.ones_like(ys)  # the last position of each group of tied scores: a threshold
        end[:, :-1] = ps[:, :-1] != ps[:, 1:]
        # At each position, the counts at the last threshold seen so far (counts only grow, so cummax fills forward).
        tp_end = np.maximum.accumulate(np.where(end, tp, 0), 1)
        fp_end = np.maximum.accumulate(np.where(end, fp, 0), 1)
        return tp, fp, end, tp_end, fp_end, tp[:, -1:], fp[:, -1:]


def _auc_resampled(r: Resampled) -> np.ndarray:
    """ROC-AUC as the Mann-Whitney statistic: ties between a fake and a real count one half."""
    ranks = rankdata(r.p, axis=1)
    n_pos = r.y.sum(1)
    n_neg = r.y.shape[1] - n_pos
    return ((ranks * r.y).sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _ap_resampled(r: Resampled) -> np.ndarray:
    """AP = sum over thresholds of (recall gained) x (precision there), scikit-learn's step rule."""
    tp, fp, end, tp_end, _, n_pos, _ = r.curve
    prev_tp = np.concatenate([np.zeros_like(tp[:, :1]), tp_end[:, :-1]], 1)
    return (np.where(end, tp - prev_tp, 0) * tp / (tp + fp)).sum(1) / n_pos[:, 0]


def _eer_resampled(r: Resampled) -> np.ndarray:
    """The first ROC point (from (0, 0)) where FNR <= FPR, interpolated from the point before it. Positions inside
    a tie group repeat the previous threshold's point, which leaves the curve unchanged."""
    _, _, _, tp_end, fp_end, n_pos, n_neg = r.curve
    fpr = np.concatenate([np.zeros((len(tp_end), 1)), fp_end / n_neg], 1)
    fnr = 1 - np.concatenate([np.zeros((len(tp_end), 1)), tp_end / n_pos], 1)
    i = np.argmax(fnr <= fpr, axis=1)[:, None]
    f0, f1 = np.take_along_axis(fpr, i - 1, 1)[:, 0], np.take_along_axis(fpr, i, 1)[:, 0]
    d0 = np.take_along_axis(fnr - fpr, i - 1, 1)[:, 0]
    d1 = np.take_along_axis(fnr - fpr, i, 1)[:, 0]
    t = np.divide(d0, d0 - d1, out=np.zeros_like(d0), where=d0 != d1)
    return f0 + t * (f1 - f0)


@dataclass(frozen=True)
class Metric:
    name: str
    mode: str  # "max" or "min": which direction is better
    label: str  # how every table names it
    # Threshold metrics read the confusion counts (ints, or arrays over resamples). Ranking metrics read
    # (labels, scores) for their value and a Resampled for every bootstrap resample; they need both classes.
    from_counts: Callable[[Counts], Any] | None = None
    from_scores: Callable[[np.ndarray, np.ndarray], float] | None = None
    resample: Callable[[Resampled], np.ndarray] | None = None

    @property
    def ranking(self) -> bool:
        return self.from_counts is None


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
    Metric("auc", "max", "ROC-AUC", from_scores=lambda y, p: float(roc_auc_score(y, p)), resample=_auc_resampled),
    Metric("ap", "max", "Average precision", from_scores=lambda y, p: float(average_precision_score(y, p)),
           resample=_ap_resampled),
    Metric("eer", "min", "EER", from_scores=equal_error_rate, resample=_eer_resampled),
)}
# The two metrics the notebook named its best model by (accuracy at 0.5, ROC-AUC): finalize's "best model by",
# each finalize predictor's paired test against the chosen seed, and the report's verdict.
HEADLINE = ("accuracy", "auc")


class ThresholdRule(StrEnum):
    """How a model's decision threshold is chosen: one name each, everywhere (finalize, evaluate, model card,
    report). The values are the files' keys (comparison.json's and evaluation.json's cells are under them); a
    member is a str, so it indexes a file's dict as the plain key does."""

    AT_HALF = "at_0.5"
    AT_VALID = "at_valid_threshold"


AT_HALF, AT_VALID = ThresholdRule.AT_HALF, ThresholdRule.AT_VALID
THRESHOLD_RULES: dict[ThresholdRule, str] = {
    AT_HALF: "threshold 0.5 (the notebook's rule)",
    AT_VALID: "threshold chosen on valid: Youden's J = TPR - FPR maximised on the model's validation probabilities "
              "(the test set never picks it)"}
LOSS = Metric("loss", "min", "BCE loss")  # computed from logits by the training loop




def bases() -> dict[str, str]:
    """Every base metric name with its direction: the loss, then METRICS (read at call time, so an entry
    registered after import counts everywhere)."""
    return {"loss": LOSS.mode, **{m.name: m.mode for m in METRICS.values()}}


# Video-level: each valid video's P(fake) aggregated from its frames' (tune/metrics/video.py): val_video_auc, ...
VIDEO = "val_video"
HELDOUT = "xval"  # the held-out sources' prefix: xval_auc (their mean), xval[SOURCE]_auc (one source)
# Reported per held-out source too, and paired between models per source by `evaluate` (the papers'
# per-generator numbers)
PER_SOURCE = ("auc", "ap")


# Selection rules that combine the in-domain and the held-out value of one metric: prefix -> (what it is, how).
# search_metrics() offers min_ for higher-is-better metrics and max_ for the others: the worse of the two.
COMBINED: dict[str, tuple[str, Callable[[float, float], float]]] = {
    "mean": ("the mean of val_{m} and xval_{m}", lambda a, b: (a + b) / 2),
    "min": ("the smaller (the worse) of val_{m} and xval_{m}", min),
    "max": ("the larger (the worse) of val_{m} and xval_{m}", max),
}


def worst_prefix(mode: str) -> str:
    return "min" if mode == "max" else "max"


def search_metrics() -> dict[str, str]:
    """Every per-epoch number a search may select by, with its direction: in-domain (val_), held-out (xval_)
    and their combinations (mean_, and min_ or max_)."""
    base = bases()
    out = {f"val_{b}": mode for b, mode in base.items()}
    out |= {f"{HELDOUT}_{b}": mode for b, mode in base.items()}
    out |= {f"{VIDEO}_{m.name}": m.mode for m in METRICS.values()}
    for b, mode in base.items():
        out |= {f"mean_{b}": mode, f"{worst_prefix(mode)}_{b}": mode}
    return out


def split_name(name: str) -> tuple[str, str]:
    """(kind, base metric) of a metric name: val_auc -> ("val", "auc"); xval[gan]_ap -> ("xval[gan]", "ap");
    mean_auc -> ("mean", "auc"). A bare "auc" is ("val", "auc"); best_ in front is ignored."""
    kind, _, base = name.removeprefix("best_").rpartition("_")
    held_out_source = kind.startswith(f"{HELDOUT}[") and kind.endswith("]")
    if base not in bases() or not (kind in ("", "val", HELDOUT, VIDEO, *COMBINED) or held_out_source):
        raise KeyError(name)
    return kind or "val", base


def mode_of(name: str) -> str:
    """Direction of `name`: any name search_metrics() lists or a per-source column, with or without best_."""
    return bases()[split_name(name)[1]]


def needs_heldout(name: str) -> bool:
    """True when `name` cannot be computed without held-out validation sources."""
    return split_name(name)[0] not in ("val", VIDEO)


def is_video_metric(name: str) -> bool:
    """True for a video-level metric (val_video_auc): valid must hold videos. False for any other name, a cost
    objective's (latency_ms) included."""
    try:
        return split_name(name)[0] == VIDEO
    except KeyError:
        return False


def metric_description(name: str) -> str:
    """One line saying what a selection metric is (recorded in run.json, shown in the report)."""
    kind, base = split_name(name)
    label = METRICS[base].label if base in METRICS else LOSS.label
    if kind == "val":
        return f"{name}: {label} on the valid split"
    if kind == VIDEO:
        return f"{name}: {label} over the valid split's videos (each video's P(fake) aggregated from its frames')"
    if kind == HELDOUT:
        return f"{name}: {label} averaged over the held-out validation sources (each source weighs the same)"
    if kind not in COMBINED:
        return f"{name}: {label} on the held-out validation source {kind[len(HELDOUT) + 1:-1]}"
    return f"{name}: {COMBINED[kind][0].format(m=base)}"


def metric_value(row: dict[str, Any], name: str) -> float:
    """`name` at one epoch's row (a combined rule is computed from the row's val_ and xval_ values);
    NaN when the row lacks it or a part of it is not a number."""
    kind, base = split_name(name)
    parts = [row.get(name)] if kind not in COMBINED else [row.get(f"val_{base}"), row.get(f"{HELDOUT}_{base}")]
    if not all(isinstance(v, (int, float)) and v == v for v in parts):
        return math.nan
    return float(parts[0]) if kind not in COMBINED else float(COMBINED[kind][1](*parts))


def heldout_row(scored: dict[str, tuple[np.ndarray, np.ndarray, float]]) -> dict[str, float]:
    """One epoch's held-out numbers from {source: (labels, P(fake), BCE loss)}: xval_NAME is the mean over
    the sources of each metric (and of the loss); with two or more sources, xval[SOURCE]_NAME is each
    source's own for PER_SOURCE (with one, it would repeat xval_NAME)."""
    per = {name: {**binary_metrics(y, p), "loss": loss} for name, (y, p, loss) in scored.items()}
    row = {f"{HELDOUT}_{b}": float(np.mean([m[b] for m in per.values()])) for b in bases()}
    for name, m in per.items() if len(per) > 1 else ():
        row |= {f"{HELDOUT}[{name}]_{b}": float(m[b]) for b in PER_SOURCE}
    return row


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
            out[m.name] = float(m.from_counts(c)) if len(y) else math.nan
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
