"""In-domain vs held-out validation, computed: comparison.json's "tradeoff" (tune/reports/tradeoff.py renders it).

Per finalized model, its retrained seeds' validation AUCs (in-domain and held-out, mean over seeds) beside
its test AUC, which model each validation picks, and, when they differ, the paired bootstrap of the two on
the test split. Both picks are made on validation numbers only.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from tune.metrics import bootstrap as stats
from tune.metrics.classification import HELDOUT, best_index
from tune.runs.comparison import ModelRow, Tradeoff, TradeoffRow

if TYPE_CHECKING:
    from tune.training.records import ModelRecord

IN_DOMAIN, HELD_OUT = "val_auc", f"{HELDOUT}_auc"


def validation(records: list[ModelRecord]) -> dict[str, float]:
    """Mean over a model's retrained seeds of the kept epoch's val_auc, xval_auc and AUC per held-out source."""
    keys = dict.fromkeys(k for r in records for k in r.best
                         if k == IN_DOMAIN or (k.startswith(HELDOUT) and k.endswith("_auc")))
    return {k: float(np.mean([r.best.get(k, math.nan) for r in records])) for k in keys}


def summary(rows: list[ModelRow], records: dict[str, list[ModelRecord]],
            samples: dict[str, dict[str, np.ndarray]], alpha: float) -> Tradeoff:
    """comparison.json's "tradeoff": each model's validation AUCs beside its test AUC, the model each
    validation picks among the tuned ones, and (when they differ) the paired bootstrap of the two on test
    (`samples`: each model's bootstrap samples, from tune.metrics.bootstrap.score)."""
    out = Tradeoff([TradeoffRow(r.name, r.model, r.kind, r.cell("auc").value, validation(records[r.name]))
                    for r in rows], alpha)
    tuned = [t for t in out.rows if t.kind == "tuned"]
    picks = [best_index([t.validation.get(k, math.nan) for t in tuned], "max") for k in (IN_DOMAIN, HELD_OUT)]
    if len(tuned) < 2 or None in picks:
        return out
    a, b = (tuned[i] for i in picks)  # type: ignore[index]
    out.in_domain_winner, out.held_out_winner, out.agree = a.name, b.name, a is b
    if a is not b:
        auc_a, auc_b = (math.nan if t.test_auc is None else t.test_auc for t in (a, b))
        diff = auc_a - auc_b
        p = stats.paired_p_value(samples[a.name]["auc"], samples[b.name]["auc"], diff)
        out.test_difference, out.p_value, out.significant = diff, p, bool(p < alpha)
    return out
