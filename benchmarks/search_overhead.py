"""Where a demo search's time goes: one Tuner for every architecture against one per architecture.

    python benchmarks/search_overhead.py [--ways new,old] [--trials N] [--no-cache]

Runs the demo search (search_spaces/demo.yaml on the built-in data, no finalize) two ways, with the same
space, seeds and trials per architecture, each on cold caches, in one Ray started once for both:
- new: one search, one Tuner for every architecture (what `python -m tune search` does);
- old: one search per architecture, one after the other (what the driver did before: a Tuner each).
Per way: wall time, slot utilisation = busy trial-seconds / (slots x wall), where a trial's busy time is
what Ray measured from its start to its last report (time_total_s), and the time outside training =
wall - (sum of all epochs' train + validation time) / slots, as a share of wall. TPE's picks after its
random start depend on the order trials finish, so the two ways' trials can differ from the 4th per
architecture on; the budget (trials, epochs, ASHA) is the same.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}
if any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from tune.cli import builtin_data  # noqa: E402
from tune.runs.layout import Run  # noqa: E402
from tune.runs.trials import read_trials  # noqa: E402
from tune.search.cluster import loopback_only, quiet_ray, start_ray  # noqa: E402
from tune.search.driver import SearchOptions, run_search  # noqa: E402
from tune.search.space import load_space  # noqa: E402

SPACE = ROOT / "search_spaces" / "demo.yaml"


def used_mib() -> float:
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    return (int(info["MemTotal"].split()[0]) - int(info["MemAvailable"].split()[0])) / 1024


class PeakMemory(threading.Thread):
    """Machine-wide memory in use, sampled every 0.2 s (Ray workers are not our children)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.base = self.peak = used_mib()
        self.stop = False

    def run(self) -> None:
        while not self.stop:
            self.peak = max(self.peak, used_mib())
            time.sleep(0.2)


def trial_time(run_dir: Path) -> tuple[float, float, int, int]:
    """(busy trial-seconds, sum of epoch times, epochs, trials) over every architecture of a run."""
    run = Run(run_dir)
    record = run.read()
    busy = epochs_s = 0.0
    epochs = trials = 0
    for arch in record.architectures:
        for t in read_trials(run, record, arch):
            if t.results:
                busy += t.results[-1]["time_total_s"]
                epochs_s += sum(r["epoch_time"] for r in t.results)
                epochs += len(t.results)
                trials += 1
    return busy, epochs_s, epochs, trials


def search(space: Path, name: str, results: Path, data: Path, trials: int | None, cache: bool) -> Path:
    return run_search(SearchOptions(space=space, data=data, name=name, results=results, trials=trials,
                                    use_cache=cache, cache_dir=results / "cache" if cache else None))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ways", default="new,old")
    ap.add_argument("--trials", type=int)
    ap.add_argument("--no-cache", action="store_true")
    a = ap.parse_args()
    data = builtin_data()  # generated once, outside the timing
    slots = int((os.cpu_count() or 1) // load_space(SPACE).resources.cpus_per_trial)
    quiet_ray()
    loopback_only()  # before Ray starts: every server on 127.0.0.1
    start_ray(None)  # one Ray for every search of both ways: its start-up is in neither
    rows = []
    for way in a.ways.split(","):
        work = Path(tempfile.mkdtemp(prefix=f"bench-search-{way}-"))
        mem = PeakMemory()
        mem.start()
        t0 = time.perf_counter()
        if way == "new":
            runs = [search(SPACE, "bench", work, data, a.trials, not a.no_cache)]
        else:  # the previous driver: a search (a Tuner) per architecture, one after the other, one shared cache
            doc = yaml.safe_load(SPACE.read_text())
            runs = []
            for arch in doc["architectures"]:
                one = work / f"{arch}.yaml"
                one.write_text(yaml.safe_dump({**doc, "architectures": {arch: doc["architectures"][arch]}}))
                try:
                    runs.append(search(one, f"bench-{arch}", work, data, a.trials, not a.no_cache))
                except Exception as e:  # noqa: BLE001 - an architecture whose weights are missing is skipped
                    print(f"{arch}: {e}")
        wall = time.perf_counter() - t0
        mem.stop = True
        busy, epochs_s, epochs, trials = (sum(x) for x in zip(*(trial_time(r) for r in runs)))
        rows.append((way, wall, busy, epochs_s, epochs, trials, mem.peak - mem.base))
    print(f"\ndemo search, {slots} slots, {'no cache' if a.no_cache else 'cold caches'}:\n")
    print("| way | wall | trials (epochs) | busy trial-seconds | slot utilisation | outside training | "
          "peak memory above idle |")
    print("|---|---|---|---|---|---|---|")
    for way, wall, busy, epochs_s, epochs, trials, peak in rows:
        label = "one Tuner, every architecture" if way == "new" else "a Tuner per architecture, in turn"
        print(f"| {label} | {wall:.1f} s | {trials} ({epochs}) | {busy:.1f} s | {busy / (slots * wall):.1%} | "
              f"{wall - epochs_s / slots:.1f} s ({(wall - epochs_s / slots) / wall:.1%}) | {peak:.0f} MiB |")
    if len(rows) == 2:
        print(f"\nwall, old / new: {rows[1][1] / rows[0][1]:.2f}x")
    print(f"driver peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
