"""The leaderboard: one row per trial, built from the files Ray Tune stores (works mid-run too)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from tune.archs import folder_name
from tune.utils import UserError, atomic_write_text

BASE_COLUMNS = ["trial_id", "arch", "ended", "epochs", "best_epoch", "score", "val_loss_at_best", "wall_s"]


def _read_results(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass  # a line being written right now
    # A trial resumed from a checkpoint replays some epochs: keep the last report of each epoch.
    by_epoch: dict[int, dict[str, Any]] = {}
    for r in rows:
        if "epoch" in r:
            by_epoch[int(r["epoch"])] = r
    return [by_epoch[e] for e in sorted(by_epoch)]


def trial_statuses(arch_dir: Path) -> dict[str, str]:
    """Ray's own view of each trial (TERMINATED, ERROR, RUNNING, PENDING...), from its experiment state."""
    states = sorted(arch_dir.glob("experiment_state-*.json"))
    if not states:
        return {}
    try:
        doc = json.loads(states[-1].read_text())
    except (OSError, ValueError):
        return {}
    out = {}
    for item in doc.get("trial_data", []):
        try:
            t = json.loads(item[0]) if isinstance(item, list) else item
            out[t["trial_id"]] = t.get("status", "")
        except (ValueError, KeyError, TypeError):
            continue
    return out


def load_leaderboard(run: Path) -> pd.DataFrame:
    run = Path(run)
    meta = json.loads((run / "run.json").read_text())
    space = meta["space"]
    metric, mode = space["metric"], space["mode"]
    sampled = {a: [n for n, p in ps.items() if p["kind"] != "fixed"] for a, ps in space["architectures"].items()}
    rows = []
    for arch in space["architectures"]:
        folder = folder_name(arch)
        arch_dir = run / "trials" / folder
        statuses = trial_statuses(arch_dir)
        for tdir in sorted(p for p in arch_dir.glob(f"{folder}_*") if p.is_dir()):
            params = json.loads((tdir / "params.json").read_text()) if (tdir / "params.json").is_file() else {}
            results = _read_results(tdir / "result.json")
            trial_id = tdir.name[len(folder) + 1:]
            status = statuses.get(trial_id, "")
            last = results[-1] if results else {}
            if (tdir / "error.txt").is_file() and status in ("ERROR", ""):
                ended = "errored"
            elif last.get("ended"):
                ended = last["ended"]
            elif status == "TERMINATED":
                ended = "stopped_by_asha"
            else:
                ended = "running" if status in ("RUNNING", "PENDING") else "interrupted"
            scores = [r[metric] for r in results if isinstance(r.get(metric), (int, float)) and r[metric] == r[metric]]
            best_i = None
            if scores:
                pick = max if mode == "max" else min
                best_v = pick(scores)
                best_i = next(i for i, r in enumerate(results) if r.get(metric) == best_v)
            row: dict[str, Any] = {
                "trial_id": trial_id, "arch": arch, "ended": ended, "epochs": len(results),
                "best_epoch": results[best_i]["epoch"] if best_i is not None else None,
                "score": results[best_i][metric] if best_i is not None else math.nan,
                "val_loss_at_best": results[best_i]["val_loss"] if best_i is not None else math.nan,
                "wall_s": round(sum(r.get("epoch_time", 0.0) for r in results), 2),
                "seed": params.get("seed", 0),
            }
            for name in sampled[arch]:
                row[name] = params.get(name)
            if ended == "errored":
                row["error"] = _first_line(tdir / "error.txt")
            rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=BASE_COLUMNS)
    df = df.sort_values("score", ascending=(mode == "min"), na_position="last", kind="stable").reset_index(drop=True)
    df.attrs.update(metric=metric, mode=mode, run=str(run))
    return df


def _first_line(path: Path) -> str:
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    errs = [ln for ln in lines if "Error" in ln or "Exception" in ln]
    return (errs[-1] if errs else lines[-1] if lines else "")[:200]


def render(df: pd.DataFrame, *, fmt: str = "table", top: int | None = None, arch: str | None = None) -> str:
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


def write_leaderboard(run: Path) -> pd.DataFrame:
    df = load_leaderboard(run)
    atomic_write_text(run / "leaderboard.csv", render(df, fmt="csv"))
    atomic_write_text(run / "leaderboard.md", render(df, fmt="markdown"))
    return df


def resolve_run(run: str | None, results: Path) -> Path:
    """A run name under `results`, a run folder's path, or (None) the newest run."""
    if run is None:
        runs = sorted((p for p in results.glob("*/run.json")), key=lambda p: p.stat().st_mtime)
        if not runs:
            raise UserError(f"no search runs found under {results}")
        return runs[-1].parent
    p = Path(run)
    for cand in (p, results / run):
        if (cand / "run.json").is_file():
            return cand
    raise UserError(f"run not found: {run} (looked for {p}/run.json and {results / run}/run.json)")
