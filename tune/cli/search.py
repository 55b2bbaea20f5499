"""`python -m tune search`."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from tune.cli.common import (
    SPACES,
    VALID_EXTRA_HELP,
    add_address,
    add_cache_gb,
    add_data,
    add_no_cache,
    add_seeds,
    add_skip_bad_images,
    add_storage,
    add_valid_extra,
    builtin_data,
    cache_budget,
)
from tune.cli.finalize import finalize
from tune.core import UserError, cache_root
from tune.core.processes import Interrupted, exit_code
from tune.evaluation.finalize import FinalizeOptions
from tune.evaluation.jobs import finalize_jobs
from tune.reports.html import write_report
from tune.runs.layout import Run, check_run_name, is_uri, results_root
from tune.runs.leaderboard import load_leaderboard, render, trial_counts
from tune.search.budget import parse_duration
from tune.search.driver import SearchOptions, run_search


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="Ray Tune search (Optuna TPE + ASHA) over every architecture of the space")
    add_data(p, "dataset root (default: the built-in dataset with demo.yaml); with --resume/--extend: where the "
             "run's data is now, if it moved (checked by content fingerprint)")
    p.add_argument("--space", type=Path, help="search-space YAML (default: search_spaces/default.yaml, "
                   "or demo.yaml on the built-in data)")
    p.add_argument("--name", help="run name: a folder under results/ (default: search-DATE-TIME)")
    p.add_argument("--trials", type=int, help="trials per architecture (overrides the space file's)")
    p.add_argument("--time-budget", metavar="DURATION", help="wall time of the whole search, e.g. 20m or 1.5h: "
                   "each architecture gets an equal share of the trial time and trials are sampled until it is "
                   "spent (with --trials too, whichever runs out first)")
    add_address(p, "join an existing Ray cluster (e.g. 10.0.0.5:6379 or auto)")
    add_storage(p, "folder for run folders (shared path on clusters), or a URI Ray accepts (s3://..., file://...): "
                "then the trials go there and the run folder stays in results/")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run of this --name")
    p.add_argument("--extend", metavar="N|DURATION", help="add N trials per architecture, or DURATION more of "
                   "search (e.g. 10m), to the finished run --name (TPE goes on from its Optuna studies)")
    add_no_cache(p, "turn the decoded-image and frozen-backbone caches off: decode and run the frozen backbone "
                 "live at every use")
    add_cache_gb(p)
    add_skip_bad_images(p)
    add_valid_extra(p, VALID_EXTRA_HELP + " (replaces the space file's valid_extra; the space's metric may then be "
                    "xval_*, mean_* or min_*, e.g. mean_auc); with --resume/--extend: where the recorded ones are "
                    "now, if they moved")
    p.add_argument("--no-finalize", action="store_true", help="skip retraining the winners and the test evaluation")
    add_seeds(p, "seeds per winner in the finalize step (default: 3)")
    p.set_defaults(func=run)


def resume_command(a: argparse.Namespace, name: str) -> str:
    """The command line that goes on with an interrupted search, with the options that say where and how."""
    args = ["python", "-m", "tune", "search", "--name", name, "--resume"]
    for flag, value in (("--storage", a.storage), ("--address", a.address), ("--cache-gb", a.cache_gb),
                        ("--seeds", a.seeds if a.seeds != 3 else None)):
        args += [flag, str(value)] if value is not None else []
    for flag, on in (("--no-cache", not a.use_cache), ("--skip-bad-images", a.skip_bad_images),
                     ("--no-finalize", a.no_finalize)):
        args += [flag] if on else []
    return shlex.join(args)


def run(a: argparse.Namespace) -> int:
    going_on = a.resume or a.extend is not None  # the run's recorded space and data, unless given
    trials, time_budget = a.trials, parse_duration(a.time_budget) if a.time_budget is not None else None
    if a.extend is not None:
        if a.name is None or a.space is not None or a.trials is not None or a.time_budget is not None:
            raise UserError("--extend N|DURATION adds N trials per architecture (or DURATION of search) to the run "
                            "--name names, with its recorded search space: give --name, and leave out --space, "
                            "--trials and --time-budget")
        if a.extend.strip().lstrip("-").isdigit():
            trials = int(a.extend)
        else:
            time_budget = parse_duration(a.extend, "--extend")
    space = a.space or (None if going_on else SPACES / ("demo.yaml" if a.data is None else "default.yaml"))
    name = check_run_name(a.name or time.strftime("search-%Y%m%d-%H%M%S"))
    root = a.data.absolute() if a.data else None if going_on else builtin_data()
    opts = SearchOptions(space=space, data=root, name=name, results=results_root(a.storage).absolute(),
                         trials=trials, time_budget=time_budget, address=a.address,
                         storage_uri=a.storage if is_uri(a.storage) else None, resume=a.resume,
                         extend=a.extend is not None, use_cache=a.use_cache, skip_bad=a.skip_bad_images,
                         cache_dir=cache_root(), valid_extra=a.valid_extra, cache_gb=cache_budget(a))
    try:
        run_dir = run_search(opts)
    except KeyboardInterrupt as e:  # the trials were stopped and Ray saved the search: say how to go on, never
        # finalize a search that did not end (its best trial may have run 1 of its epochs)
        how = e.args[0] if isinstance(e, Interrupted) else "SIGINT"
        if Run.named(opts.results, name).exists():
            print(f"search interrupted ({how}); its state is saved, resume with: {resume_command(a, name)}",
                  file=sys.stderr)
        else:
            print(f"search interrupted ({how}) before it started; nothing was saved", file=sys.stderr)
        return exit_code(e)
    print(f"search finished: {run_dir}")

    board = load_leaderboard(run_dir)
    print(render(board, fmt="table", top=10))
    print(trial_counts(board))
    if not a.no_finalize:

        finalize(run_dir, FinalizeOptions(seeds=a.seeds, cache_dir=cache_root(), jobs=finalize_jobs(run_dir)))
    else:
        print(f"wrote {write_report(run_dir)}")
    return 0
