"""`python -m tune reproduce`."""

from __future__ import annotations

import argparse

import torch

from tune.cli.common import add_cache_gb, add_moved_data, add_run, add_storage, cache_budget, run_folder
from tune.core import cache_root
from tune.evaluation.reproduce import render, reproduce_trial


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="re-run one trial's recorded config and check its numbers exactly")
    add_run(p)
    p.add_argument("--trial", default="best", help="trial id (as in the leaderboard) or best (default: best)")
    add_storage(p)
    add_moved_data(p)
    add_cache_gb(p)
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    cache_budget(a)
    folder = run_folder(a)
    rep = reproduce_trial(folder, a.trial, cache_dir=cache_root(), data=a.data, valid_extra=a.valid_extra)
    print(render(rep), end="")
    bad = rep.differing
    if bad:
        print(f"NOT reproduced: {rep.arch} trial {rep.trial_id} differs at epoch(s) {', '.join(map(str, bad))}")
        if torch.cuda.is_available():
            print("note: this ran on CUDA, where some kernels are not bit-reproducible; exactness is promised on CPU")
        return 1
    print(f"reproduced exactly: {rep.arch} trial {rep.trial_id}, {len(rep.recorded)} epoch(s) x {len(rep.keys)} "
          "metrics identical")
    return 0
