"""Does the search beat the notebook's fixed recipe? Both on the same data, size and test split.

    python benchmarks/demo_vs_recipe.py RUN [--seeds 3] [--epochs 30]

RUN is a finished demo run (`make demo`, or `python -m tune search --name RUN`). Its finalized winners
(K seeds each, tested once) are read from comparison.json. Beside them, the notebook's fixed recipe
(custom CNN 32/64/128, Dense(128) + Dropout(0.5), Adam 1e-4, batch 32, early stopping with patience 3,
at most --epochs epochs) is trained here with the same seeds at the run's image size, on the run's train
and valid splits (checked by fingerprint), and scored once on its test split. Prints one table.
Targets (issue: pretrained backbones): best finalized test AUC >= 0.90 and >= 0.05 above the recipe's mean.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}
if any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):  # must be set before the process starts
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from tune.archs import DEFAULT_ARCH  # noqa: E402
from tune.config import TrainConfig  # noqa: E402
from tune.finalize import load_test  # noqa: E402
from tune.inference import probabilities  # noqa: E402
from tune.metrics import binary_metrics  # noqa: E402
from tune.runinfo import cache_dirs, load_train_valid, read_run  # noqa: E402
from tune.stats import t_interval  # noqa: E402
from tune.train import fit  # noqa: E402
from tune.utils import cache_root  # noqa: E402


def recipe_auc(job: tuple[int, int, int, int], data: tuple) -> tuple[float, int]:
    """One seed of the recipe, in its own process with the trials' thread count: (test AUC, epochs run)."""
    seed, size, epochs, threads = job
    train, valid, test = data
    cfg = TrainConfig.of(arch=DEFAULT_ARCH, image_size=size, epochs=epochs, patience=3, seed=seed, threads=threads)
    r = fit(cfg, train, valid, log=None)
    return float(binary_metrics(test.y, probabilities(r.model, test.x))["auc"]), len(r.history)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="results/RUN of a finished demo")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=30, help="the recipe's epoch cap (patience 3 stops it earlier)")
    a = ap.parse_args()
    info = read_run(a.run)
    cmp = json.loads((a.run / "comparison.json").read_text())
    train, valid = load_train_valid(info, cache_root())
    test = load_test(info, cache_dirs(info, cache_root())[0])
    seeds = list(range(info.seed, info.seed + a.seeds))
    jobs = max(1, min(len(seeds), (os.cpu_count() or 1) // info.threads))
    # spawn, not fork: forking a process whose OpenMP threads already ran can deadlock
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        done = list(pool.map(recipe_auc, [(s, info.image_size, a.epochs, info.threads) for s in seeds],
                             [(train, valid, test)] * len(seeds)))
    aucs, epochs = [d[0] for d in done], [d[1] for d in done]
    for s, (auc, n) in zip(seeds, done):
        print(f"recipe seed {s}: test AUC {auc:.4f} after {n} epochs", flush=True)
    mean, half = t_interval(aucs)
    print(f"\n{len(test)} test images at {info.image_size}px; run {info.name}\n")
    print("| model | seeds | test ROC-AUC per seed | mean ± 95% t half-width |")
    print("|---|---|---|---|")
    best = max(cmp["rows"], key=lambda r: r["at_0.5"]["auc"]["mean"])
    for row in cmp["rows"]:
        c = row["at_0.5"]["auc"]
        print(f"| {row['model']} (searched, finalized) | {len(row['seeds'])} | "
              f"{', '.join(f'{v:.3f}' for v in c['per_seed'])} | {c['mean']:.3f} ± {c['t_half']:.3f} |")
    print(f"| notebook recipe ({DEFAULT_ARCH}, Adam 1e-4, patience 3, ≤{a.epochs} epochs; ran "
          f"{', '.join(map(str, epochs))}) | {len(aucs)} | {', '.join(f'{v:.3f}' for v in aucs)} | "
          f"{mean:.3f} ± {half:.3f} |")
    gap = best["at_0.5"]["auc"]["mean"] - float(np.mean(aucs))
    print(f"\nbest finalized: {best['model']} AUC {best['at_0.5']['auc']['mean']:.3f} (target >= 0.90); "
          f"beats the recipe's mean by {gap:+.3f} (target >= +0.05)")


if __name__ == "__main__":
    main()
