"""The leaderboard: one row per trial, from Ray Tune's stored results wherever they are (works mid-run too)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from tune.core import UserError, atomic_write_text
from tune.metrics.classification import HELDOUT, split_name
from tune.metrics.costs import COSTS, MEASURE_S
from tune.models.hparams import HParamKind
from tune.runs.layout import Run, RunRecord
from tune.runs.pareto import front_mask, goals
from tune.runs.trials import kept_score, read_trials

BASE_COLUMNS = ["trial_id", "arch", "trial_no", "ended", "epochs", "best_epoch", "score", "val_loss_at_best",
                "wall_s"]


def side_by_side(meta: RunRecord) -> list[str]:
    """With held-out validation sources: the in-domain and held-out values shown beside each trial's score,
    at its kept epoch: the search metric's base and AUC (val_ and xval_), then AUC per held-out source
    when there are several."""
    held = (meta.data.valid_extra or {}).get("sources", [])
    if not held:
        return []
    bases = dict.fromkeys([split_name(meta.metric)[1], "auc"])
    per_source = [f"{HELDOUT}[{s['name']}]_auc" for s in held] if len(held) > 1 else []
    return [f"{kind}_{b}" for b in bases for kind in ("val", HELDOUT)] + per_source


def load_leaderboard(run_dir: Path) -> pd.DataFrame:
    """One row per trial, best first. `trial_no` numbers an architecture's trials in the order they
    started (the search's, then each --extend's); `ended` says how each one ended."""
    run = Run(Path(run_dir))
    meta = run.read()
    space = meta.space
    metric, mode = space["metric"], space["mode"]
    shown = side_by_side(meta)
    sampled = {a: [n for n, p in ps.items() if p["kind"] != HParamKind.FIXED]
               for a, ps in space["architectures"].items()}
    rows = []
    for arch in space["architectures"]:
        for no, t in enumerate(read_trials(run, meta, arch), 1):
            results, ended = t.results, t.ended
            kept, score = kept_score(results, metric)
            # by epoch number, not position: rows an interrupted copy lost (trials.mend_torn_results) shift positions
            at = next((r for r in results if r.get("epoch") == kept), {}) if kept else {}
            row: dict[str, Any] = {
                "trial_id": t.trial_id, "arch": arch, "trial_no": no, "ended": ended,
                "epochs": int(results[-1]["epoch"]) if results else 0,  # the trial's own count, as for `at`
                "best_epoch": kept, "score": score, "val_loss_at_best": at.get("val_loss", math.nan),
                **{c: at.get(c, math.nan) for c in shown},
                "wall_s": round(sum(r.get("epoch_time", 0.0) for r in results), 2),
                # what the kept model costs to serve (tune/training/latency.py): in every row once measured
                **{c: results[-1][c] for c in (*COSTS, MEASURE_S) if results and c in results[-1]},
                **{n: at.get(n, math.nan) for n, _ in space.get("objectives", ())[1:]
                   if n not in COSTS and at},  # a further objective that is a metric: at the kept epoch
                "seed": t.params.get("seed", 0),
            }
            for name in sampled[arch]:
                row[name] = t.params.get(name)
            if ended == "errored":
                row["error"] = t.error
            rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=BASE_COLUMNS)
    df = df.sort_values("score", ascending=(mode == "min"), na_position="last", kind="stable").reset_index(drop=True)
    objectives = goals(space, df.columns)
    if objectives:
        df.insert(df.columns.get_loc("wall_s"), "pareto", front_mask(df, objectives))
    df.attrs.update(metric=metric, mode=mode, run=str(run.path))
    return df


def trial_counts(df: pd.DataFrame) -> str:
    """How many trials each architecture got and how they ended, in one line (a time budget gives each
    architecture the same trial time, not the same number of trials)."""
    parts = []
    for arch, group in df.groupby("arch", sort=False):
        ended = group["ended"].value_counts()
        parts.append(f"{arch} {len(group)} ({', '.join(f'{n} {how}' for how, n in ended.items())})")
    return "trials per architecture: " + ("; ".join(parts) if parts else "none yet")


def render(df: pd.DataFrame, *, fmt: str = "table", top: int | None = None, arch: str | None = None,
           pareto: bool = False) -> str:
    if pareto:
        if "pareto" not in df.columns:
            raise UserError("--pareto: this run has no second objective measured (no latency_ms: searched before "
                            "serving costs were measured)")
        df = df[df["pareto"].astype(bool)]
    if arch:
        df = df[df["arch"] == arch].dropna(axis=1, how="all")
    if top:
        df = df.head(top)
    metric = df.attrs.get("metric", "score")
    shown = df.rename(columns={"score": f"best_{metric}"})
    if fmt == "csv":
        return shown.to_csv(index=False)
    if fmt == "json":
        return shown.to_json(orient="records", indent=2)
    if fmt == "markdown":
        return to_markdown(shown)
    if fmt == "table":
        return shown.to_string(index=False, float_format=lambda v: f"{v:.4g}")
    raise UserError(f"unknown format {fmt!r}; expected table, csv, markdown or json")


def to_markdown(df: pd.DataFrame) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.4g}"
        return "" if v is None else str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def write_leaderboard(run_dir: Path) -> pd.DataFrame:
    run = Run(Path(run_dir))
    df = load_leaderboard(run.path)
    atomic_write_text(run.leaderboard("csv"), render(df, fmt="csv"))
    atomic_write_text(run.leaderboard("md"), render(df, fmt="markdown"))
    return df
