"""`python -m tune finalize`."""

from __future__ import annotations

import argparse
from pathlib import Path

from tune.cli.common import add_cache_gb, add_moved_data, add_run, add_storage, cache_budget, run_folder
from tune.core import cache_root


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finalize", help="retrain each architecture's best trial with K seeds; test once; compare")
    add_run(p)
    p.add_argument("--seeds", type=int, default=3, help="retrainings per model, seeds SEED..SEED+K-1 (default: 3)")
    p.add_argument("--baseline", action="store_true", help="also train the notebook's fixed recipe per architecture")
    add_storage(p)
    add_moved_data(p)
    add_cache_gb(p)
    p.add_argument("--extra-test", type=Path, nargs="+", metavar="DATA", help=(
                   "also evaluate the exported winners per source on these folders (as `evaluate`)"))
    p.add_argument("--pick", type=pick_rule, default="best", metavar="RULE", help=(
                   "which model is shipped (models/picked/, what serve and export default to): best (default), "
                   "\"latency_ms<=8\" (the most accurate trial within the budget) or \"within:0.01\" (the fastest "
                   "trial whose valid score is within 0.01 of the best); it is retrained beside the winners"))
    p.set_defaults(func=run)


def pick_rule(text: str) -> object:
    from tune.runs.pareto import parse_pick

    try:
        return parse_pick(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def run(a: argparse.Namespace) -> int:
    from tune.evaluation.finalize import run_finalize
    from tune.evaluation.jobs import finalize_jobs

    cache_budget(a)
    folder = run_folder(a)
    run_finalize(folder, seeds=a.seeds, baseline=a.baseline, cache_dir=cache_root(), jobs=finalize_jobs(folder),
                 extra_test=a.extra_test, data=a.data, valid_extra=a.valid_extra,
                 pick=a.pick)
    return 0
