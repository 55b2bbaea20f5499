"""finalize's scoring stage: every predictor of every model (its seeds, their ensembles and flip TTA) scored on
the test split by the one engine (tune.metrics.bootstrap.score), and the comparison built from those cells. The
seed each model ships is chosen on valid; test numbers never choose anything."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tune.data.images import ImageSet
from tune.evaluation import ensembles, tradeoff
from tune.evaluation.picking import versus_most_accurate
from tune.evaluation.retrain import Candidate
from tune.evaluation.video_comparison import section
from tune.metrics import bootstrap as stats
from tune.metrics.classification import AT_HALF, HEADLINE, THRESHOLD_RULES, better
from tune.runs.comparison import ModelRow, Resampling, Verdict
from tune.runs.files import Comparison
from tune.runs.info import RunInfo
from tune.training.records import ModelRecord


def compare_models(info: RunInfo, cands: list[Candidate], records: dict[str, list[ModelRecord]],
            valid: ImageSet, test: ImageSet, picked: dict[str, Any] | None = None) -> Comparison:
    """Every predictor of every model (its seeds, their ensembles and flip TTA: tune.evaluation.ensembles) scored
    on the test split by the one engine (tune.metrics.bootstrap.score): cells with t-intervals over seeds and
    bootstrap intervals over the test images, all on the same resamples, so every comparison is paired."""
    y = test.y.astype(int)
    chosen = {c.name: choose_seed(info, records[c.name]) for c in cands}
    preds = {c.name: ensembles.predictors([info.run.finalize(c.name, r.seed) for r in records[c.name]],
                                          [float(r.threshold or 0.5) for r in records[c.name]],
                                          records[c.name].index(chosen[c.name]), valid, test) for c in cands}
    cells, samples = stats.score(y, {(c.name, v): p for c in cands for v, p in preds[c.name].items()},
                                 fingerprint=test.fingerprint)
    rows, variant_rows = [], []
    for c in cands:
        recs = records[c.name]
        row = ModelRow(model=c.label, name=c.name, arch=c.arch, kind=c.kind, trial_id=c.trial_id,
                       config=c.config.replace(seed=chosen[c.name].seed), seeds=[r.seed for r in recs],
                       valid_scores=[r.valid_score for r in recs], thresholds=[float(r.threshold or 0.5) for r in recs],
                       folder=str(info.run.finalize(c.name).relative_to(info.run.path)),
                       chosen_seed=chosen[c.name].seed, chosen_threshold=chosen[c.name].threshold,
                       cells=cells[c.name, "seeds"])
        rows.append(row)
        variant_rows += ensembles.rows(row, preds[c.name], cells, samples)
    seeds = {c.name: samples[c.name, "seeds"] for c in cands}
    best = best_models(rows, seeds)

    video = section([(row, c.config, [info.run.finalize(c.name, r.seed) for r in records[c.name]])
                     for row, c in zip(rows, cands, strict=True)], valid, test)
    return Comparison(
        run=info.name, metric=info.metric, n_test=len(y), test_fingerprint=test.fingerprint, rows=rows,
        best=best, picked=versus_most_accurate(rows, seeds, best, picked, info.mode) if picked else None,
        threshold_rules=dict(THRESHOLD_RULES), alpha=stats.ALPHA, skipped=info.meta.skipped,
        bootstrap=Resampling(stats.RESAMPLES, [stats.SEED, "the test split's fingerprint"],
                             statistic="each resample's metric is averaged over seeds"),
        ensembles=ensembles.section(variant_rows),
        tradeoff=tradeoff.summary(rows, records, seeds, stats.ALPHA) if info.heldout else None, video=video)


def choose_seed(info: RunInfo, recs: list[ModelRecord]) -> ModelRecord:
    """The seed whose model scored best on VALID (ties: the first seed). Test numbers never choose."""
    best = recs[0]
    for r in recs[1:]:
        best = r if better(r.valid_score, best.valid_score, info.mode) else best
    return best


def best_models(rows: list[ModelRow], samples: dict[str, dict[str, np.ndarray]]) -> dict[str, Verdict]:
    """The notebook named the best model by accuracy and by AUC (at 0.5); we add whether the gap is significant."""
    tuned = [r for r in rows if r.kind == "tuned"]
    out: dict[str, Verdict] = {}
    for m in HEADLINE:
        ranked = sorted(tuned, key=lambda r: -(r.cell(m).value or -math.inf))
        a = ranked[0]
        out[m] = Verdict(a.name, a.cell(m).value)
        if len(ranked) > 1:
            b, k = ranked[1], stats.key(AT_HALF, m)
            test = stats.paired(a.cell(m), b.cell(m), samples[a.name][k], samples[b.name][k])
            out[m] = Verdict(a.name, a.cell(m).value, b.name, b.cell(m).value, test,
                             tie=test is not None and test.difference == 0)
    return out
