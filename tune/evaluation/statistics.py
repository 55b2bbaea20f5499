"""The numbers of an evaluation (what evaluation.json holds: tune.runs.files.Evaluation), from per-image scores.

Every source's cells come from the one engine (tune.metrics.bootstrap.score), as finalize's do: within a
source every model and condition is scored on the same resamples, so model differences are paired, and
the resamples are seeded by the source's content fingerprint, so a source's intervals do not depend on
which other sources come along (and finalize and evaluate give the same numbers on the same images). The
mean-over-sources row averages each resample's per-source values, the bootstrap distribution of that mean.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from tune.core import library_versions
from tune.metrics import bootstrap as stats
from tune.metrics.cells import Cell
from tune.metrics.classification import AT_HALF, AT_VALID, METRICS, PER_SOURCE, THRESHOLD_RULES
from tune.runs.comparison import Cells, Resampling
from tune.runs.evaluation import MEAN, EvaluatedModel, EvaluatedSource, EvaluationRow, PairedRow
from tune.runs.files import Evaluation

if TYPE_CHECKING:

    from tune.data.perturb import Condition
    from tune.data.sources import Scored, Source
    from tune.inference import LoadedModel

PAIRED_METRICS = PER_SOURCE  # the per-generator numbers, paired between models per source
Samples = dict[str, "np.ndarray"]


def one_class_note(n_fake: int, n_real: int) -> str:
    if n_fake and n_real:
        return ""
    return f"only {'Fake' if n_fake else 'Real'} images: AUC, AP and EER undefined"


def mean_cells(per: list[Cells], samples: list[Samples]) -> tuple[Cells, Samples]:
    """The mean over sources of each cell, its interval from the mean of each resample's per-source values."""
    with _quiet():
        mean_samples = {k: np.nanmean([s[k] for s in samples], axis=0) for k in samples[0]}
        out: Cells = {}
        for rule in per[0]:
            out[rule] = {}
            for m in per[0][rule]:
                values = [c[rule][m].value for c in per if c[rule][m].value is not None]
                value = float(np.mean(values)) if values else None
                lo, hi = stats.percentile_interval(mean_samples[stats.key(rule, m)]) if values else (None, None)
                out[rule][m] = Cell(value, lo, hi)
    return out, mean_samples


def evaluation_statistics(models: dict[str, LoadedModel], sources: list[Source], conditions: list[Condition],
           scored: dict[str, Scored], *, resamples: int = 1000, seed: int = 0) -> Evaluation:
    keys = [(m, c.name) for m in models for c in conditions]
    cells: dict[tuple[str, str, str], Cells] = {}
    samples: dict[tuple[str, str, str], Samples] = {}
    fingerprints = {s.name: s.fingerprint() for s in sources}
    for s in sources:
        sc = scored[s.name]
        predictors = {(m, c): stats.Predictor(sc.p[m, c][None, :], {AT_HALF: [0.5], AT_VALID: [models[m].threshold]},
                                              over_seeds=False) for m, c in keys}
        got, boot = stats.score(sc.y, predictors, fingerprint=fingerprints[s.name], seed=seed, resamples=resamples)
        for m, c in keys:
            cells[m, s.name, c], samples[m, s.name, c] = got[m, c], boot[m, c]
    counts = {s.name: (int(scored[s.name].y.sum()), int((scored[s.name].y == 0).sum())) for s in sources}
    rows, means = [], {}
    for c in conditions:
        for m in models:
            for s in sources:
                skipped = f"{len(scored[s.name].bad)} unreadable image(s) skipped" if scored[s.name].bad else ""
                note = "; ".join(x for x in (one_class_note(*counts[s.name]), skipped) if x)
                rows.append(EvaluationRow(m, s.name, c.name, *counts[s.name], cells[m, s.name, c.name], note))
            means[m, c.name] = mean_cells([cells[m, s.name, c.name] for s in sources],
                                          [samples[m, s.name, c.name] for s in sources])
            defined = sum(cells[m, s.name, c.name][AT_HALF]["auc"].defined for s in sources)
            note = f"mean over {len(sources)} source(s)" + (
                f"; AUC, AP and EER over the {defined} with both classes" if defined < len(sources) else "")
            rows.append(EvaluationRow(m, MEAN, c.name, sum(f for f, _ in counts.values()),
                                      sum(r for _, r in counts.values()), means[m, c.name][0], note))
    paired = paired_rows(list(models), [s.name for s in sources], conditions, cells, samples, means)
    return Evaluation(
        created=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        versions=library_versions(),
        bootstrap=Resampling(resamples, [seed, "each source's fingerprint"], level=stats.LEVEL),
        threshold_rules={str(k): v for k, v in THRESHOLD_RULES.items()}, metrics={m: METRICS[m].label for m in METRICS},
        models=[EvaluatedModel(n, m.arch, str(m.path), m.sha256, m.threshold, m.threshold_rule, m.record.run,
                               m.record.trial_id, m.image_size) for n, m in models.items()],
        sources=[EvaluatedSource(s.name, str(s.path), *counts[s.name], fingerprints[s.name],
                                 [p for p, _ in scored[s.name].bad]) for s in sources],
        conditions=list(conditions), rows=rows, paired=paired)


def paired_rows(names: list[str], sources: list[str], conditions: list[Condition],
                cells: dict[tuple[str, str, str], Cells],
                samples: dict[tuple[str, str, str], Samples],
                means: dict[tuple[str, str], tuple[Cells, Samples]]) -> list[PairedRow]:
    """Each pair of models, per source and overall (the mean over sources), on the same resamples."""
    out = []
    for c in conditions:
        for where in [*sources, "overall"]:
            got = {m: means[m, c.name] if where == "overall" else (cells[m, where, c.name], samples[m, where, c.name])
                   for m in names}
            for ia, a in enumerate(names):
                for b in names[ia + 1:]:
                    (ca, sa), (cb, sb) = got[a], got[b]
                    for metric in PAIRED_METRICS:
                        test = stats.paired(ca[AT_HALF][metric], cb[AT_HALF][metric], sa[metric], sb[metric])
                        if test is not None and math.isfinite(test.difference):  # one class: nothing to compare
                            out.append(PairedRow(where, c.name, a, b, metric, test))
    return out


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """numpy warns on the mean of an all-NaN slice (a metric undefined in every source): that is a null cell."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        yield
