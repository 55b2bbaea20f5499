"""`python -m tune cache ls|clear`: what the cache folder holds, and freeing it."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tune.core import UserError, cache_root
from tune.search.budget import parse_duration
from tune.training.store import budget_bytes, entries, gb, remove

KINDS = ("features", "views", "decoded")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cache", help="list (ls) or free (clear) the decoded-image and frozen-prefix feature caches")
    p.add_argument("action", choices=("ls", "clear"))
    p.add_argument("--cache-dir", type=Path, help="the cache folder (default: $TUNE_CACHE_DIR or "
                   "~/.cache/deepfake-tune)")
    p.add_argument("--older-than", metavar="DURATION", help="only files last used longer ago than this, e.g. 12h "
                   "or 7d")
    p.add_argument("--kind", nargs="+", choices=KINDS, default=["features", "views"], help="which caches (default: "
                   "features views; decoded images are cleared only when asked, because their readers do not mark "
                   "them in use: clear them when no search or training is running)")
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    root = (a.cache_dir or cache_root()).absolute()
    if a.cache_dir is not None and not root.is_dir():
        raise UserError(f"--cache-dir {a.cache_dir}: no such folder")
    cutoff = time.time() - parse_duration(a.older_than, "--older-than") if a.older_than else None
    chosen = [e for e in entries(root) if e.kind in a.kind and (cutoff is None or e.last_used < cutoff)]
    if a.action == "ls":
        print(f"{'kind':<9} {'architecture':<20} {'depth':>5} {'dtype':<8} {'size':>9}  {'last used':<16}  file")
        for e in chosen:
            used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used))
            print(f"{e.kind:<9} {e.arch:<20} {e.depth:>5} {e.dtype:<8} {gb(e.size):>9}  {used:<16}  "
                  f"{e.path.name}{' (in use)' if e.in_use else ''}")
        feats = root / "features"
        print(f"{len(chosen)} file(s), {gb(sum(e.size for e in chosen))}; feature cache budget on this machine: "
              f"{gb(budget_bytes(feats))}")
        return 0
    freed = [e for e in chosen if remove(e.path)]
    busy = len(chosen) - len(freed)
    print(f"freed {len(freed)} file(s), {gb(sum(e.size for e in freed))}"
          + (f"; kept {busy} in use" if busy else ""))
    return 0
