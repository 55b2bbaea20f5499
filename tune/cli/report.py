"""`python -m tune report`."""

from __future__ import annotations

import argparse
import time
import webbrowser

from tune.cli.common import add_run, add_storage, run_folder
from tune.reports.html import write_report


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write results/RUN/report.html, one self-contained page (works mid-search)")
    add_run(p)
    add_storage(p)
    p.add_argument("--open", action="store_true", help="open the page in the default web browser")
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    folder = run_folder(a)
    t0 = time.perf_counter()
    path = write_report(folder)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s)")
    if a.open:
        webbrowser.open(path.absolute().as_uri())
    return 0
