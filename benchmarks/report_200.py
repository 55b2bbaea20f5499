"""The HTML report of a 200-trial run: build time (a fresh `python -m tune report` process, imports
included, as a user runs it) and page size. Targets: < 10 s, < 15 MB.

    python benchmarks/report_200.py [--trials 200] [--run results/RUN]   # --run: time an existing run

The search has a trivial budget (up to 3 epochs, 32-px images, 16 images per class) so that ASHA
stops some trials and the leaderboard, the studies and the epochs chart are as long as a real
200-trial run's; it is then finalized with 1 seed, so every section of the page is there.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import make_dataset  # noqa: E402

SPACE = """
metric: val_auc
image_size: 32
budget: {trials: 200, max_epochs: 3, grace_period: 1, reduction_factor: 3, patience: 3}
resources: {cpus_per_trial: 1}
fixed: {batch_size: 16}
architectures:
  custom_cnn:
    lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}
    conv_blocks: {type: int, low: 1, high: 2}
    base_width: {type: categorical, choices: [4, 8]}
    dropout: {type: uniform, low: 0.0, high: 0.5}
"""


def make_run(trials: int) -> Path:
    from tune.cli.finalize import finalize
    from tune.evaluation.finalize import FinalizeOptions
    from tune.search.driver import SearchOptions, run_search

    work = Path(tempfile.mkdtemp(prefix="bench-report-"))
    data = make_dataset(work / "data", n=8, size=32)
    (work / "space.yaml").write_text(SPACE)
    t0 = time.perf_counter()
    run_dir = run_search(SearchOptions(space=work / "space.yaml", data=data, name="report200",
                                       results=work / "results", trials=trials, cache_dir=work / "cache"))
    finalize(run_dir, FinalizeOptions(seeds=1, cache_dir=work / "cache"), log=lambda s: None)
    print(f"search of {trials} trials + finalize (1 seed) took {time.perf_counter() - t0:.0f} s")
    return run_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--run", type=Path, help="an existing run folder (skips the search)")
    ap.add_argument("--repeat", type=int, default=3, help="report builds to time (default: 3)")
    a = ap.parse_args()
    os.environ.setdefault("TUNE_OFFLINE", "1")
    run_dir = a.run.absolute() if a.run else make_run(a.trials)
    from tune.runs.leaderboard import load_leaderboard

    board = load_leaderboard(run_dir)
    print(f"run {run_dir}: {len(board)} trials ({board['ended'].value_counts().to_dict()})")
    walls, cpus = [], []
    for _ in range(a.repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "tune", "report", str(run_dir)], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
        walls.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    size = (run_dir / "report.html").stat().st_size
    # The build is one thread reading a few MB, so on an idle machine its wall time is its CPU time; on a
    # shared machine the wall time also counts the waits for a core, hence both (and the load) are printed.
    print(f"`python -m tune report` (a fresh process, imports included), best of {a.repeat}: "
          f"{min(cpus):.1f} s CPU (user + sys), {min(walls):.1f} s wall with load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (target < 10 s)")
    print(f"report.html: {size / 1e6:.1f} MB (target < 15 MB)")


if __name__ == "__main__":
    main()
