"""Load: a 200-trial search with a trivial budget (1 epoch, 32-px images) must complete; then time
the leaderboard build from the stored files and report the driver's peak memory.

    python benchmarks/load_200.py [--trials 200]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import make_dataset  # noqa: E402

from tune.runs.leaderboard import load_leaderboard  # noqa: E402
from tune.search.driver import SearchOptions, run_search  # noqa: E402

SPACE = """
metric: val_auc
image_size: 32
budget: {trials: 200, max_epochs: 1, grace_period: 1, reduction_factor: 2, patience: 3}
resources: {cpus_per_trial: 1}
fixed: {batch_size: 16}
architectures:
  custom_cnn:
    lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}
    conv_blocks: {type: int, low: 1, high: 2}
    base_width: {type: categorical, choices: [4, 8]}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=200)
    a = ap.parse_args()
    os.environ.setdefault("TUNE_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="bench-load-"))
    data = make_dataset(work / "data", n=8, size=32)
    (work / "space.yaml").write_text(SPACE)
    t0 = time.perf_counter()
    run_dir = run_search(SearchOptions(space=work / "space.yaml", data=data, name="load", results=work / "results",
                                       trials=a.trials, cache_dir=work / "cache"))
    wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    df = load_leaderboard(run_dir)
    lb = time.perf_counter() - t0
    print(f"\n{len(df)} trials finished ({df['ended'].value_counts().to_dict()}) in {wall:.0f} s "
          f"({wall / max(len(df), 1):.2f} s per trial)")
    print(f"leaderboard built from stored files in {lb:.2f} s (target < 5 s)")
    print(f"driver peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
