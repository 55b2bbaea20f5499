"""The numbers of an evaluation (evaluation.json's dict), from per-image scores.

Point values come from tune.metrics.classification.binary_metrics (scikit-learn underneath); intervals from the
stratified bootstrap of tune.metrics.bootstrap. Within a source every model and condition is scored on the
same resamples, so model differences are paired; sources are resampled independently (each with
a generator seeded by the seed and the source's content fingerprint), and the mean-over-sources
row averages each resample's per-source values, which is the bootstrap distribution of that mean.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from tune.data.perturb import Condition
    from tune.data.sources import Source
    from tune.runs.inference import LoadedModel

THRESHOLD_METRICS = ("accuracy", "precision", "recall", "f1")
RANKING_METRICS = ("auc", "ap", "eer")
PAIRED_METRICS = ("auc", "ap")
LEVEL, ALPHA = 0.95, 0.05
Samples = dict[str, "np.ndarray"]  # "auc", "ap", "eer", "at_threshold/accuracy", ... -> one value per resample


@dataclass
class Scored:
    """One source's scores: labels and paths of the readable images, P(fake) per (model, condition)."""

    y: np.ndarray
    paths: list[str]
    p: dict[tuple[str, str], np.ndarray]
    bad: list[tuple[str, str]] = field(default_factory=list)  # (path, why) of unreadable images


def _num(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def cell(value: float, samples: np.ndarray | None) -> dict[str, float | None]:
    """{"value", "low", "high"}: the value on all images and its percentile bootstrap interval (null if undefined)."""
    import numpy as np

    from tune.metrics import bootstrap as stats

    if _num(value) is None or samples is None or np.isnan(samples).all():
        return {"value": _num(value), "low": None, "high": None}
    lo, hi = stats.percentile_interval(samples, LEVEL)
    return {"value": float(value), "low": lo, "high": hi}


def bootstrap_source(y: np.ndarray, p: dict[Any, np.ndarray], thresholds: dict[Any, float], resamples: int,
                     rng: np.random.Generator) -> dict[Any, Samples]:
    """Every metric on the same stratified resamples of one source, for each (model, condition) key."""
    import numpy as np

    from tune.metrics import bootstrap as stats

    both = len(np.unique(y)) == 2
    rules = {"at_threshold": thresholds, "at_0.5": dict.fromkeys(thresholds, 0.5)}
    out: dict[Any, Samples] = {k: {} for k in p}
    parts: dict[Any, dict[str, list[np.ndarray]]] = {k: {} for k in p}
    for start in range(0, resamples, stats.CHUNK):
        idx = stats.stratified_indices(y, min(stats.CHUNK, resamples - start), rng)
        for k, pk in p.items():
            got: dict[str, np.ndarray] = {}
            for rule, thr in rules.items():
                with np.errstate(invalid="ignore", divide="ignore"):  # AUC of a one-class resample: NaN, unused
                    r = stats.resampled_metrics(y, pk, idx, thr[k])
                got.update({f"{rule}/{m}": r[m] for m in THRESHOLD_METRICS})
            if both:
                got.update(auc=r["auc"], **stats.resampled_ranking_metrics(y, pk, idx))
            else:
                got.update({m: np.full(len(idx), np.nan) for m in RANKING_METRICS})
            for m, v in got.items():
                parts[k].setdefault(m, []).append(v)
    for k in p:
        out[k] = {m: np.concatenate(v) for m, v in parts[k].items()}
    return out


def _row(model: str, source: str, cond: str, n_fake: int, n_real: int, values: dict[str, float],
         samples: Samples, note: str) -> dict[str, Any]:
    row: dict[str, Any] = {"model": model, "source": source, "condition": cond, "n_fake": n_fake, "n_real": n_real}
    for m in RANKING_METRICS:
        row[m] = cell(values[m], samples[m])
    for rule in ("at_threshold", "at_0.5"):
        row[rule] = {m: cell(values[f"{rule}/{m}"], samples[f"{rule}/{m}"]) for m in THRESHOLD_METRICS}
    row["note"] = note
    return row


def one_class_note(n_fake: int, n_real: int) -> str:
    if n_fake and n_real:
        return ""
    return f"only {'Fake' if n_fake else 'Real'} images: AUC, AP and EER undefined"


def tables(models: dict[str, LoadedModel], sources: list[Source], conditions: list[Condition],
           scored: dict[str, Scored], *, resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    import numpy as np

    from tune.core import library_versions
    from tune.metrics.classification import binary_metrics

    keys = [(m, c.name) for m in models for c in conditions]
    values: dict[tuple[str, str, str], dict[str, float]] = {}
    samples: dict[tuple[str, str, str], Samples] = {}
    fingerprints = {s.name: s.fingerprint() for s in sources}
    for s in sources:
        sc = scored[s.name]
        thresholds = {(m, c): models[m].threshold for m, c in keys}
        # Seeded by the source's content: its intervals do not depend on which other sources come along.
        rng = np.random.default_rng([seed, int(fingerprints[s.name], 16)])
        boot = bootstrap_source(sc.y, {k: sc.p[k] for k in keys}, thresholds, resamples, rng)
        for m, c in keys:
            at = {rule: binary_metrics(sc.y, sc.p[m, c], t) for rule, t in
                  (("at_threshold", models[m].threshold), ("at_0.5", 0.5))}
            values[m, s.name, c] = {**{k: at["at_threshold"][k] for k in RANKING_METRICS},
                                    **{f"{r}/{k}": at[r][k] for r in at for k in THRESHOLD_METRICS}}
            samples[m, s.name, c] = boot[m, c]
    counts = {s.name: (int(scored[s.name].y.sum()), int((scored[s.name].y == 0).sum())) for s in sources}
    rows, means = [], {}
    for c in conditions:
        for m in models:
            for s in sources:
                skipped = f"{len(scored[s.name].bad)} unreadable image(s) skipped" if scored[s.name].bad else ""
                note = "; ".join(x for x in (one_class_note(*counts[s.name]), skipped) if x)
                rows.append(_row(m, s.name, c.name, *counts[s.name], values[m, s.name, c.name],
                                 samples[m, s.name, c.name], note))
            per = [values[m, s.name, c.name] for s in sources]
            with _quiet():
                mv = {k: float(np.nanmean([v[k] for v in per])) for k in per[0]}
                ms = {k: np.nanmean([samples[m, s.name, c.name][k] for s in sources], axis=0) for k in per[0]}
            means[m, c.name] = (mv, ms)
            defined = sum(math.isfinite(v["auc"]) for v in per)
            note = f"mean over {len(sources)} source(s)" + (
                f"; AUC, AP and EER over the {defined} with both classes" if defined < len(sources) else "")
            rows.append(_row(m, "mean", c.name, sum(f for f, _ in counts.values()), sum(r for _, r in counts.values()),
                             mv, ms, note))
    paired = paired_rows(list(models), [s.name for s in sources], conditions, values, samples, means)
    return {
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "versions": library_versions(),
        "bootstrap": {"resamples": resamples, "seed": seed, "stratified": True, "level": LEVEL},
        "models": [{"name": n, "arch": m.arch, "path": str(m.path), "sha256": m.sha256, "threshold": m.threshold,
                    "threshold_rule": m.threshold_rule, "run": m.record.get("run"), "trial": m.record.get("trial_id"),
                    "image_size": m.image_size} for n, m in models.items()],
        "sources": [{"name": s.name, "path": str(s.path), "n_fake": counts[s.name][0], "n_real": counts[s.name][1],
                     "fingerprint": fingerprints[s.name], "skipped": [p for p, _ in scored[s.name].bad]}
                    for s in sources],
        "conditions": [c.to_dict() for c in conditions],
        "rows": rows,
        "paired": paired,
        "plots": {},
    }


def paired_rows(names: list[str], sources: list[str], conditions: list[Condition],
                values: dict[tuple[str, str, str], dict[str, float]], samples: dict[tuple[str, str, str], Samples],
                means: dict[tuple[str, str], tuple[dict[str, float], Samples]]) -> list[dict[str, Any]]:
    """Each pair of models, per source and overall (the mean over sources), on the same resamples."""
    from tune.metrics import bootstrap as stats

    out = []
    for c in conditions:
        for where in [*sources, "overall"]:
            got = {m: means[m, c.name] if where == "overall" else (values[m, where, c.name], samples[m, where, c.name])
                   for m in names}
            for ia, a in enumerate(names):
                for b in names[ia + 1:]:
                    (va, sa), (vb, sb) = got[a], got[b]
                    for metric in PAIRED_METRICS:
                        diff = va[metric] - vb[metric]
                        if not math.isfinite(diff):
                            continue  # one class only: nothing to compare
                        pv = stats.paired_p_value(sa[metric], sb[metric], diff)
                        out.append({"source": where, "condition": c.name, "a": a, "b": b, "metric": metric,
                                    "difference": float(diff), "p_value": pv, "significant": bool(pv < ALPHA)})
    return out


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """numpy warns on the mean of an all-NaN slice (a metric undefined in every source): that is a null cell."""
    import numpy as np

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        yield
