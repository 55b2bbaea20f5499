"""`python -m tune leaderboard`."""

from __future__ import annotations

import argparse

from tune.cli.common import add_arch, add_format, add_run, add_storage, run_folder
from tune.runs.layout import Run
from tune.runs.leaderboard import load_leaderboard, render, trial_counts


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("leaderboard", help="one row per trial, best first (works while a search runs)")
    add_run(p)
    add_storage(p)
    p.add_argument("--top", type=int, help="show only the best K trials")
    add_arch(p, "only this architecture")
    p.add_argument("--pareto", action="store_true", help="only the trials on the Pareto front (accuracy against "
                   "latency, or the space's objectives)")
    add_format(p, ("table", "csv", "markdown", "json"), "table")
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    run = Run(run_folder(a))
    board = load_leaderboard(run.path)
    if board.empty and a.format == "table":
        print(f"run {run.name}: no trials yet in {run.trials_root(run.read())}")
        return 0
    out = render(board, fmt=a.format, top=a.top, arch=a.arch, pareto=a.pareto)
    print(out, end="" if out.endswith("\n") else "\n")
    if a.format == "table":
        print(trial_counts(board))
    return 0
