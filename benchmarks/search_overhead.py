"""Wall time of the demo search and the share of it spent training versus overhead.

    python benchmarks/search_overhead.py [--no-cache] [--trials N]

Training = the sum of every trial's per-epoch times (train + validation), measured inside the
trials. With C trial slots running at once, the search could at best take training / C seconds;
the rest of the wall time is overhead (Ray start, data decode, trial start-up, checkpoints,
the frozen-feature cache build and idle slots at the end of each architecture's search).
"""

from __future__ import annotations

import argparse
import json
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

from tune.cli import builtin_data, cache_root  # noqa: E402
from tune.search import SearchOptions, run_search  # noqa: E402
from tune.space import load_space  # noqa: E402


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--no-cache", action="store_true")
    ap.add_argument("--trials", type=int)
    a = ap.parse_args()
    data = builtin_data()  # generated once, outside the timing
    space_file = ROOT / "search_spaces" / "demo.yaml"
    slots = int((os.cpu_count() or 1) // load_space(space_file).resources.cpus_per_trial)
    results = Path(tempfile.mkdtemp(prefix="bench-search-"))
    cache = results / "cache"  # a cold cache: the decode and feature builds are part of the timing
    mem = PeakMemory()
    mem.start()
    t0 = time.perf_counter()
    run_dir = run_search(SearchOptions(space=space_file, data=data, name="bench", results=results,
                                       trials=a.trials, use_cache=not a.no_cache, cache_dir=cache))
    wall = time.perf_counter() - t0
    mem.stop = True
    train_s = 0.0
    epochs = 0
    for f in run_dir.glob("trials/*/*/result.json"):
        rows = {json.loads(line)["epoch"]: json.loads(line) for line in f.read_text().splitlines() if line}
        train_s += sum(r["epoch_time"] for r in rows.values())
        epochs += len(rows)
    ideal = train_s / slots
    print(f"\ndemo search ({'no cache' if a.no_cache else 'cached'}; built-in data in {cache_root()}):")
    print(f"  wall time                 {wall:7.1f} s")
    print(f"  training (sum of epochs)  {train_s:7.1f} s over {epochs} epochs in {slots} parallel slots")
    print(f"  training share of wall    {ideal / wall:7.1%}  (training / slots / wall)")
    print(f"  overhead                  {wall - ideal:7.1f} s")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  peak memory of the search {mem.peak - mem.base:7.0f} MiB above the {mem.base:.0f} MiB in use before "
          f"(driver alone: {peak:.0f} MiB)")


if __name__ == "__main__":
    main()
