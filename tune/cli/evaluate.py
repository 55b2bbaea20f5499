"""`python -m tune evaluate`."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tune.cli.common import (
    add_address,
    add_model,
    add_out,
    add_run_flag,
    add_seed,
    add_skip_bad_images,
    add_storage,
    run_folder,
)
from tune.core import UserError
from tune.data.perturb import parse_perturb
from tune.data.sources import find_sources
from tune.evaluation.evaluate import evaluate, load_models
from tune.evaluation.on_cluster import cluster_address, connected
from tune.reports.campanel import plot_jobs
from tune.reports.evaluation import render_markdown, write_outputs
from tune.runs.files import EVALUATION
from tune.runs.layout import Run, evaluation_folder, results_root

if TYPE_CHECKING:
    from tune.evaluation.evaluate import Evaluated
    from tune.runs.files import Evaluation


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="per-source (generator) and per-perturbation tables for trained detectors")
    who = p.add_mutually_exclusive_group(required=True)
    add_model(who, repeatable=True)
    add_run_flag(who, "every exported winner of this run (results/RUN/models/*.pth)")
    p.add_argument("data", type=Path, nargs="+", metavar="DATA", help=(
                   "a folder with Fake/ and Real/ (any case) or 0_real/ and 1_fake/, or a parent of such folders "
                   "(one source per sub-folder)"))
    p.add_argument("--perturb", nargs="+", metavar="NAME=S1,S2", help=(
                   "robustness conditions: jpeg=QUALITY,... blur=SIGMA,... resize=FACTOR,... (after DATA)"))
    add_out(p, "output folder (default: results/eval-DATE-TIME)")
    add_storage(p)
    add_skip_bad_images(p)
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default: %(default)s)")
    add_seed(p, "bootstrap seed (default: %(default)s)")
    add_address(p, "score on this Ray cluster (HOST:PORT or auto): each chunk of images a Ray task, the same numbers "
                "as here; the models and DATA must be at the same paths on every node")
    p.set_defaults(func=run)


def write_evaluation(out: Path, done: Evaluated, log: Callable[[str], None] = print) -> Evaluation:
    """An evaluation's folder: the rendered files and plots (tune/reports/evaluation.py), then evaluation.json,
    last, so its presence marks a complete evaluation."""
    write_outputs(out, done.result, done.scored, log=log, extra_plots=plot_jobs(done.panels))
    done.result.save(Path(out) / EVALUATION)
    return done.result


def run(a: argparse.Namespace) -> int:
    if a.resamples < 10 or a.seed < 0:
        raise UserError(f"--resamples must be >= 10 and --seed >= 0, got {a.resamples} and {a.seed}")
    conditions = parse_perturb(a.perturb)  # every input is checked before any image is scored
    if a.run:
        paths = Run(run_folder(a)).winners()
    else:
        paths = a.model
    models = load_models(paths)
    for m in models:
        for note in m.notes:
            print(f"note: {note}")
    sources = find_sources(a.data)
    out = a.out or evaluation_folder(results_root(a.storage))
    address = cluster_address(a.address, None)
    with connected(address) if address else contextlib.nullcontext():
        done = evaluate(models, sources, conditions, skip_bad=a.skip_bad_images, resamples=a.resamples, seed=a.seed,
                        cluster=bool(address))
    result = write_evaluation(out, done)
    print(render_markdown(result), end="")
    print(f"wrote {out}/evaluation.{{md,csv,json}}, scores.csv and {len(result.plots)} plot(s)")
    return 0
