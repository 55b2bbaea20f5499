"""Which epoch to keep: the lowest val loss (the notebook's rule) or the best val AUC? Per architecture.

    python benchmarks/monitor.py DATA [--size 128] [--seeds 3] [--threads 1]

Each architecture's fixed recipe is trained with the same seeds twice, once per rule (the rule also drives
early stopping and is a trial's score in a search), and its kept weights are scored once on the test split:
- custom_cnn: the notebook's recipe (Adam 1e-4, patience 3, up to 30 epochs);
- efficientnet_lite0: benchmarks/recipes.py's fixed fine-tuning recipe, deeper (all 18 units trainable,
  which the search favours), 8 epochs with patience 3.
Prints test AUC per seed, the mean per rule, the epochs run and the paired bootstrap p of the difference
(the same resamples, each resample's AUC averaged over seeds). The shipped spaces set `monitor` per
architecture from this table (docs/search.md, "Search spaces").
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from tune.cli import fast_allocator  # noqa: E402
from tune.core import cache_root  # noqa: E402
from tune.data.images import load_split  # noqa: E402
from tune.inference import probabilities  # noqa: E402
from tune.metrics.bootstrap import Predictor, bootstrap, paired_p_value, resamples_for, t_interval  # noqa: E402
from tune.metrics.classification import AT_HALF, binary_metrics  # noqa: E402
from tune.training.config import TrainConfig  # noqa: E402

RECIPES = {
    "custom_cnn": {"arch": "custom_cnn", "epochs": 30, "patience": 3},
    "efficientnet_lite0": {"arch": "efficientnet_lite0", "weights": "packaged", "unfrozen_blocks": 18,
                           "head_sizes": (), "dropout": 0.2, "lr": 1e-3, "backbone_lr_mult": 0.3, "epochs": 8,
                           "patience": 3},
}
RULES = ("val_loss", "val_auc")


def one(job: tuple[str, str, int, int, int, str]) -> tuple[np.ndarray, int]:
    from tune.training.loop import fit

    fast_allocator()
    arch, rule, seed, size, threads, data = job
    train, valid, test = (load_split(Path(data), s, size, cache_dir=cache_root() / "decoded")
                          for s in ("train", "valid", "test"))
    cfg = TrainConfig.of(**RECIPES[arch], monitor=rule, image_size=size, seed=seed, threads=threads)
    r = fit(cfg, train, valid, cache_dir=cache_root() / "features", log=None)
    return probabilities(r.model, test.x), len(r.history)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--archs", nargs="+", default=list(RECIPES))
    a = ap.parse_args()
    data = a.data.absolute()
    test = load_split(data, "test", a.size, cache_dir=cache_root() / "decoded")
    y = test.y.astype(int)
    jobs = [(arch, rule, seed, a.size, a.threads, str(data)) for arch in a.archs for rule in RULES
            for seed in range(a.seeds)]
    workers = max(1, (os.cpu_count() or 1) // a.threads)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        done = dict(zip(jobs, pool.map(one, jobs)))
    print(f"{len(y)} test images at {a.size}px, seeds 0..{a.seeds - 1}\n")
    print("| architecture | kept epoch by | test AUC per seed | mean ± 95% t | epochs run | paired p (AUC - loss) |")
    print("|---|---|---|---|---|---|")
    for arch in a.archs:
        probs = {rule: np.stack([done[(arch, rule, s, a.size, a.threads, str(data))][0] for s in range(a.seeds)])
                 for rule in RULES}
        aucs = {rule: [binary_metrics(y, p)["auc"] for p in probs[rule]] for rule in RULES}
        boot = bootstrap(y, {rule: Predictor(probs[rule], {AT_HALF: [0.5] * a.seeds}) for rule in RULES},
                         rng=resamples_for(test.fingerprint))
        diff = float(np.mean(aucs["val_auc"]) - np.mean(aucs["val_loss"]))
        p = paired_p_value(boot["val_auc"]["auc"], boot["val_loss"]["auc"], diff)
        for rule in RULES:
            mean, half = t_interval(aucs[rule])
            epochs = [done[(arch, rule, s, a.size, a.threads, str(data))][1] for s in range(a.seeds)]
            print(f"| {arch} | {rule} | {', '.join(f'{v:.4f}' for v in aucs[rule])} | {mean:.4f} ± {half:.4f} | "
                  f"{', '.join(map(str, epochs))} | {f'{diff:+.4f}, p = {p:.3f}' if rule == 'val_auc' else ''} |")


if __name__ == "__main__":
    main()
