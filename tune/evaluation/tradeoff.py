"""In-domain vs held-out validation, computed: comparison.json's "tradeoff" (tune/reports/tradeoff.py renders it).

Per finalized model, its retrained seeds' validation AUCs (in-domain and held-out, mean over seeds) beside
its test AUC, which model each validation picks, and, when they differ, the paired bootstrap of the two on
the test split. Both picks are made on validation numbers only.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from tune.metrics import bootstrap as stats
from tune.metrics.cells import cell_of
from tune.metrics.classification import HELDOUT, best_index

if TYPE_CHECKING:
    from tune.training.records import ModelRecord

IN_DOMAIN, HELD_OUT = "val_auc", f"{HELDOUT}_auc"


def validation(records: list[ModelRecord]) -> dict[str, float]:
    """Mean over a model's retrained seeds of the kept epoch's val_auc, xval_auc and AUC per held-out source."""
    keys = dict.fromkeys(k for r in records for k in r.best
                         if k == IN_DOMAIN or (k.startswith(HELDOUT) and k.endswith("_auc")))
    return {k: float(np.mean([r.best.get(k, math.nan) for r in records])) for k in keys}


def summary(rows: list[dict[str, Any]], records: dict[str, list[ModelRecord]],
            samples: dict[str, dict[str, np.ndarray]], alpha: float) -> dict[str, Any]:
    """comparison.json's "tradeoff": each model's validation AUCs beside its test AUC, the model each
    validation picks among the tuned ones, and (when they differ) the paired bootstrap of the two on test
    (`samples`: each model's bootstrap samples, from tune.metrics.bootstrap.score)."""
    table_rows = [{"name": r["name"], "model": r["model"], "kind": r["kind"], **validation(records[r["name"]]),
                   "test_auc": cell_of(r["at_0.5"]["auc"]).value} for r in rows]
    tuned = [t for t in table_rows if t["kind"] == "tuned"]
    out: dict[str, Any] = {"rows": table_rows, "alpha": alpha}
    picks = [best_index([t.get(k, math.nan) for t in tuned], "max") for k in (IN_DOMAIN, HELD_OUT)]
    if len(tuned) < 2 or None in picks:
        return out
    a, b = (tuned[i] for i in picks)  # type: ignore[index]
    out.update(in_domain_winner=a["name"], held_out_winner=b["name"], agree=a is b)
    if a is not b:
        diff = a["test_auc"] - b["test_auc"]
        p = stats.paired_p_value(samples[a["name"]]["auc"], samples[b["name"]]["auc"], diff)
        out.update(test_difference=diff, p_value=p, significant=bool(p < alpha))
    return out
