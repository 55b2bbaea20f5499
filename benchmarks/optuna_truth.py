"""What telling Optuna the truth changes: best validation AUC after N trials, when trials ASHA stopped
are told to Optuna as COMPLETE with their partial score (Ray's OptunaSearch, the old handling) versus
PRUNED with their per-epoch values (tune.search.searcher.HonestOptunaSearch, the new one).

    python benchmarks/optuna_truth.py [--trials 12] [--repeats 3] [--epochs 6] [--image-size 48]

Same built-in data, same space, same seeds (space seed r for repeat r) for both; custom_cnn only,
small images and few epochs so it stays cheap. Prints, per repeat and as a mean over repeats: the best
val AUC of any trial, the best of the trials that ran their full course (the ones a TPE model should
learn from), the best of the trials TPE chose (after its random start-up, the only ones the handling
can change), and how many trials ASHA stopped.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}
if any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import tune.search.searcher  # noqa: E402
from tune.cli import builtin_data  # noqa: E402
from tune.runs.leaderboard import load_leaderboard  # noqa: E402
from tune.search.cluster import loopback_only, quiet_ray  # noqa: E402
from tune.search.driver import SearchOptions, run_search  # noqa: E402

SPACE = """
metric: val_auc
mode: max
seed: {seed}
image_size: {size}
budget: {{trials: {trials}, max_epochs: {epochs}, grace_period: 1, reduction_factor: 2, patience: 3}}
resources: {{cpus_per_trial: 1}}
fixed: {{batch_size: 32}}
architectures:
  custom_cnn:
    lr: {{type: loguniform, low: 1.0e-4, high: 1.0e-2}}
    conv_blocks: {{type: int, low: 1, high: 3}}
    base_width: {{type: categorical, choices: [8, 16, 32]}}
    head_sizes: {{type: categorical, choices: [[32], [64], [64, 16]]}}
    dropout: {{type: uniform, low: 0.0, high: 0.5}}
"""


def one_search(work: Path, data: Path, handling: str, seed: int, a: argparse.Namespace) -> dict[str, float]:
    honest = tune.search.searcher.HonestOptunaSearch
    if handling == "old":  # run_search looks the class up on use: swap in Ray's own OptunaSearch
        from ray.tune.search.optuna import OptunaSearch

        tune.search.searcher.HonestOptunaSearch = OptunaSearch
    try:
        name = f"{handling}-seed{seed}"
        space = work / f"{name}.yaml"
        space.write_text(SPACE.format(seed=seed, size=a.image_size, trials=a.trials, epochs=a.epochs))
        t0 = time.time()
        run_dir = run_search(SearchOptions(space=space, data=data, name=name, results=work / "results",
                                           cache_dir=work / "cache"))
        board = load_leaderboard(run_dir)
    finally:
        tune.search.searcher.HonestOptunaSearch = honest
    full = board[board["ended"] != "stopped_by_asha"]
    startup = max(2, min(10, a.trials // 2))  # as tune.search.driver: the first trials are TPE's random start-up
    tpe = board[board["trial_no"] > startup]
    return {"best": float(board["score"].max()), "best_full": float(full["score"].max()) if len(full) else float("nan"),
            "best_tpe": float(tpe["score"].max()) if len(tpe) else float("nan"),
            "asha_stopped": int((board["ended"] == "stopped_by_asha").sum()), "wall_s": time.time() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--image-size", type=int, default=48)
    a = ap.parse_args()
    os.environ.setdefault("TUNE_OFFLINE", "1")
    import ray

    quiet_ray()
    loopback_only()
    data = builtin_data()
    work = Path(tempfile.mkdtemp(prefix="bench-optuna-truth-"))
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    results: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    try:
        for seed in range(a.repeats):
            for handling in ("old", "new"):  # interleaved, so machine load hits both alike
                results[handling].append(one_search(work, data, handling, seed, a))
    finally:
        ray.shutdown()
    print(f"\nbuilt-in data, custom_cnn, {a.trials} trials x up to {a.epochs} epochs at {a.image_size}px, "
          f"ASHA grace 1 / reduction 2; best val AUC after {a.trials} trials")
    print(f"{'handling':<44} {'seed':>4} {'best':>7} {'best full-course':>17} {'best TPE-phase':>15} "
          f"{'ASHA-stopped':>13} {'wall s':>7}")
    label = {"old": "old: ASHA-stopped told COMPLETE (Ray's)", "new": "new: ASHA-stopped told PRUNED"}
    for handling, rows in results.items():
        for seed, r in enumerate(rows):
            print(f"{label[handling]:<44} {seed:>4} {r['best']:>7.4f} {r['best_full']:>17.4f} {r['best_tpe']:>15.4f} "
                  f"{r['asha_stopped']:>13d} {r['wall_s']:>7.0f}")
        print(f"{label[handling]:<44} {'mean':>4} {statistics.mean(r['best'] for r in rows):>7.4f} "
              f"{statistics.mean(r['best_full'] for r in rows):>17.4f} "
              f"{statistics.mean(r['best_tpe'] for r in rows):>15.4f} "
              f"{statistics.mean(r['asha_stopped'] for r in rows):>13.1f}")


if __name__ == "__main__":
    main()
