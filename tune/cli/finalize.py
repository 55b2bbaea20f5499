"""`python -m tune finalize`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from tune.cli.common import (
    add_address,
    add_cache_gb,
    add_moved_data,
    add_run,
    add_seeds,
    add_storage,
    cache_budget,
    run_folder,
)
from tune.cli.evaluate import write_evaluation
from tune.core import atomic_write_text, cache_root
from tune.evaluation.finalize import FinalizeOptions, run_finalize
from tune.evaluation.jobs import finalize_jobs
from tune.reports.campanel import save_panels
from tune.reports.evaluation import render_markdown
from tune.reports.figures import make_plots
from tune.reports.html import write_report
from tune.reports.tables import comparison_csv, comparison_markdown
from tune.reports.tradeoff import markdown as tradeoff_markdown
from tune.runs.pareto import parse_pick

if TYPE_CHECKING:
    from tune.runs.files import Comparison


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finalize", help="retrain each architecture's best trial with K seeds; test once; compare")
    add_run(p)
    add_seeds(p, "retrainings per model, seeds SEED..SEED+K-1 (default: 3)")
    p.add_argument("--baseline", action="store_true", help="also train the notebook's fixed recipe per architecture")
    add_storage(p)
    add_moved_data(p)
    add_cache_gb(p)
    add_address(p, "retrain on this Ray cluster (HOST:PORT or auto), each (model, seed) a Ray task with a trial's "
                "resources; the run folder, data and caches must be at the same paths on every node (default: the "
                "cluster the search ran on, as run.json records; `local`: this machine's processes)")
    p.add_argument("--extra-test", type=Path, nargs="+", metavar="DATA", help=(
                   "also evaluate the exported winners per source on these folders (as `evaluate`)"))
    p.add_argument("--pick", type=pick_rule, default="best", metavar="RULE", help=(
                   "which model is shipped (models/picked/, what serve and export default to): best (default), "
                   "\"latency_ms<=8\" (the most accurate trial within the budget) or \"within:0.01\" (the fastest "
                   "trial whose valid score is within 0.01 of the best); it is retrained beside the winners"))
    p.set_defaults(func=run)


def pick_rule(text: str) -> object:
    try:
        return parse_pick(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def finalize(run_dir: Path, options: FinalizeOptions, *, log: Callable[[str], None] = print) -> Comparison:
    """Finalize the run (tune.evaluation.finalize: retrain, test, compute), then write what it found, each file
    once: the extra test sets' folder, comparison.{json,csv,md}, the Grad-CAM panels, the plots and the report."""
    done = run_finalize(run_dir, options, log=log)
    run, cmp = done.run, done.cmp
    md = comparison_markdown(cmp) + tradeoff_markdown(cmp.tradeoff)
    section = ""
    if done.extra_test is not None:
        out = run.extra_test
        ev = write_evaluation(out, done.extra_test, log)
        # In comparison.json the plot paths are relative to the run folder, where that file lives.
        ev = replace(ev, plots={k: f"{out.name}/{v}" for k, v in ev.plots.items()})
        cmp.evaluation = ev
        section = render_markdown(ev, level=2, title="Extra test sets (exported winners)")
    cmp.save(run.comparison("json"))
    atomic_write_text(run.comparison("csv"), comparison_csv(cmp))
    atomic_write_text(run.comparison("md"), md.rstrip("\n") + "\n\n" + section if section else md)
    save_panels(run, done.panels, log)
    log(md)
    plots = make_plots(run.path, log=log)
    if section:
        log(section)
    log(f"wrote {run.comparison('{md,csv,json}')}, the winners in {run.model('*').parent}, "
        f"{len(plots)} plot(s) in {run.plot('*').parent} and {write_report(run.path, log=log)}")
    return cmp


def run(a: argparse.Namespace) -> int:
    cache_budget(a)
    folder = run_folder(a)
    finalize(folder, FinalizeOptions(seeds=a.seeds, baseline=a.baseline, cache_dir=cache_root(),
                                     jobs=finalize_jobs(folder), extra_test=a.extra_test, data=a.data,
                                     valid_extra=a.valid_extra, pick=a.pick, address=a.address))
    return 0
