"""finalize's export stage: each architecture's winner goes to models/<arch>.pth (`export_winners`), and with
--pick the trial a rule names (tune/runs/pareto.py) is retrained beside each architecture's winner,
tested and exported as models/picked/ (best.pth + record.json), which serve and export default to.

With `--pick best` (the default) the picked model is the most accurate winner. run.json records the
rule and the trial it named (`pick`), so a later command knows what was shipped and why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tune.core import atomic_write_bytes, file_sha256
from tune.metrics import bootstrap as stats
from tune.metrics.classification import AT_HALF, HEADLINE, better
from tune.runs.comparison import ModelRow, Picked, Verdict, Versus
from tune.runs.pareto import SPEED, PickRule, choose
from tune.training.records import RECORD, WEIGHTS, ModelRecord

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from tune.runs.files import Comparison
    from tune.runs.info import RunInfo
    from tune.runs.layout import Run

PICKED = "picked"  # models/picked/: the shipped model


def picked_dir(run: Run) -> Path:
    return run.path / "models" / PICKED


def picked_trial(info: RunInfo, board: pd.DataFrame, rule: PickRule, winners: dict[str, str],
                 log: Callable[[str], None]) -> tuple[tuple[str, str, str] | None, dict[str, Any]]:
    """((model name, arch, trial id) to retrain besides the winners, or None when the rule names a winner or is
    `best`; what run.json records). `winners`: trial id -> the winner's model name."""
    row = choose(board, rule, info.mode)
    if row is None:
        return None, {**rule.to_dict(), "model": None}
    tid, arch = str(row["trial_id"]), str(row["arch"])
    about = {**rule.to_dict(), "trial_id": tid, "arch": arch, "score": float(row["score"]),
             **({SPEED: float(row[SPEED])} if SPEED in row and row[SPEED] == row[SPEED] else {})}
    log(f"--pick {rule.text}: {arch} trial {row['trial_no']} ({tid}), valid {info.metric} {row['score']:.4f}"
        + (f", {row[SPEED]:.3g} ms/image" if SPEED in about else ""))
    if tid in winners:
        return None, {**about, "model": winners[tid]}
    name = f"{arch}-{PICKED}"
    return (name, arch, tid), {**about, "model": name}


def record_pick(info: RunInfo, about: dict[str, Any]) -> None:
    """run.json's `pick`: the rule, and the trial and model it named."""
    meta = info.run.read()  # as finalize left it (moved data recorded)
    info.run.write(replace(meta, pick=about))


def picked_row(rows: list[ModelRow], about: dict[str, Any], mode: str) -> ModelRow:
    """The comparison row shipped as models/picked/: the model the rule named, else (`best`) the winner with the
    best valid score. Test numbers never choose."""
    rows = [r for r in rows if r.kind in ("tuned", PICKED)]
    if about.get("model"):
        return next(r for r in rows if r.name == about["model"])
    row = rows[0]
    for r in rows[1:]:
        if better(max(r.valid_scores), max(row.valid_scores), mode):
            row = r
    return row


def versus_most_accurate(rows: list[ModelRow], samples: dict[str, dict[str, np.ndarray]],
                         best: dict[str, Verdict], about: dict[str, Any], mode: str) -> Picked:
    """The picked model against the most accurate winner on the test split (comparison.json's `picked`): for each
    headline metric at 0.5, both values, the difference and its paired bootstrap p (the comparison's resamples),
    so a user sees what the rule cost. The most accurate is by test ROC-AUC, as the verdict says; it only
    reports, never chooses."""

    name, top = picked_row(rows, about, mode).name, best["auc"].model
    a_row, b_row = (next(r for r in rows if r.name == n) for n in (name, top))
    out = Picked(name, about["rule"], top, name == top)
    for m in HEADLINE:
        a, b, k = a_row.cell(m), b_row.cell(m), stats.key(AT_HALF, m)
        out.metrics[m] = Versus(a.value, b.value,
                                None if name == top else stats.paired(a, b, samples[name][k], samples[top][k]))
    return out


def export_winners(info: RunInfo, cmp: Comparison, records: dict[str, list[ModelRecord]]) -> None:
    """models/<arch>.pth + .json: the tuned seed with the best valid score, ready for `predict`; its record is the
    seed's own, with what chose it and where it came from."""
    for row in cmp.tuned:
        rec = next(r for r in records[row.name] if r.seed == row.chosen_seed)
        src = info.run.finalize(row.name, rec.seed)
        weights = info.run.model(row.arch, "pth")
        atomic_write_bytes(weights, (src / WEIGHTS).read_bytes())
        replace(rec, arch=row.arch, run=info.name, chosen_by=f"best valid {info.metric} over seeds {row.seeds}",
                source=info.run.own(src), weights_sha256=file_sha256(weights)).save(info.run.model(row.arch, "json"))


def export_picked(info: RunInfo, cmp: Comparison, records: dict[str, list[ModelRecord]],
                  about: dict[str, Any]) -> Path:
    """models/picked/best.pth + record.json: the picked model's seed with the best valid score (for `best`: the
    winner with the best valid score)."""
    row = picked_row(cmp.rows, about, info.mode)
    rec = next(r for r in records[row.name] if r.seed == row.chosen_seed)
    src = info.run.finalize(row.name, rec.seed)
    out = picked_dir(info.run)
    atomic_write_bytes(out / WEIGHTS, (src / WEIGHTS).read_bytes())
    replace(rec, arch=row.arch, run=info.name, chosen_by=f"--pick {about['rule']}; best valid {info.metric} "
            f"over seeds {row.seeds}", source=info.run.own(src),
            weights_sha256=file_sha256(out / WEIGHTS)).save(out / RECORD)
    return out / WEIGHTS
