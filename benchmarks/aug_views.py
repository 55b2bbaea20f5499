"""Augmentation that survives the feature cache: V cached views against one pass, and against live training.

    python benchmarks/aug_views.py [--n-per-class 500] [--size 128] [--seeds 3] [--threads 1]

On the built-in data, EfficientNet-Lite0 with its last 5 units trainable (the fixed recipe of
benchmarks/recipes.py, 6 epochs, the epoch with the best val AUC kept) is trained with augmented views
(`--augment`, default crop,jitter at strength 0.5) for V = 1, 4 and 8, each cached and live, plus plain
images (no augmentation) and a fresh view every epoch (V = 0, live only). Per setting, means over seeds:
- the train/val loss gap at the kept epoch (val loss - train loss: how much it memorised);
- the kept epoch's val AUC;
- the seconds spent on the frozen part: building the views (cached) or running it every step (live),
  against one pass over the plain images (what the cache costs without augmentation).
Cached and live give the same numbers for the same V (the live path computes the very pixels of the
views); the table shows both so that is visible, and what the cache saves.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tune.cli import fast_allocator  # noqa: E402
from tune.data.builtin import generate_demo_data  # noqa: E402
from tune.data.images import load_split  # noqa: E402
from tune.training import cache  # noqa: E402
from tune.training.config import TrainConfig  # noqa: E402
from tune.training.loop import fit  # noqa: E402

RECIPE = {"arch": "efficientnet_lite0", "weights": "packaged", "unfrozen_blocks": 5, "head_sizes": (),
          "dropout": 0.2, "lr": 1e-3, "backbone_lr_mult": 0.3, "epochs": 6, "patience": 6, "monitor": "val_auc"}


class FrozenClock:
    """Seconds spent in the frozen prefix: building cached sources, or encoding live batches."""

    def __init__(self) -> None:
        self.seconds = 0.0
        real_encode, real_cached = cache.Detector.encode, cache.cached_encode

        def encode(model, x):  # live batches
            t0 = time.perf_counter()
            try:
                return real_encode(model, x)
            finally:
                self.seconds += time.perf_counter() - t0

        def cached_encode(*a, **k):  # includes augmenting the view's pixels
            t0 = time.perf_counter()
            try:
                return real_cached(*a, **k)
            finally:
                self.seconds += time.perf_counter() - t0

        cache.Detector.encode, cache.cached_encode = encode, cached_encode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-per-class", type=int, default=500)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--augment", default="crop,jitter")
    ap.add_argument("--strength", type=float, default=0.5)
    a = ap.parse_args()
    fast_allocator()
    torch.set_num_threads(a.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-views-"))
    generate_demo_data(work / "data", n_per_class=a.n_per_class, size=a.size, seed=0)
    train, valid = (load_split(work / "data", s, a.size) for s in ("train", "valid"))
    clock = FrozenClock()
    settings = [("plain images (no augmentation)", {"augment": "none"}, True)]
    for v in (1, 4, 8):
        settings += [(f"V = {v}, cached", {"aug_views": v}, True), (f"V = {v}, live", {"aug_views": v}, False)]
    settings.append(("V = 0 (a fresh view every epoch), live", {"aug_views": 0}, False))
    print(f"{len(train)} train / {len(valid)} valid at {a.size}px; augment {a.augment} at strength {a.strength}; "
          f"{a.seeds} seeds; {a.threads} thread(s)\n")
    print("| setting | loss gap at the kept epoch | val AUC (kept epoch) | frozen-part seconds | vs the plain cache |")
    print("|---|---|---|---|---|")
    one_pass = None
    for label, over, cached in settings:
        gaps, aucs, spent = [], [], []
        for seed in range(a.seeds):
            cfg = TrainConfig.of(**{**RECIPE, "augment": a.augment, "aug_strength": a.strength, **over},
                                 image_size=a.size, seed=seed, threads=a.threads, use_cache=cached)
            folder = work / f"features-{seed}"  # a fresh cache per run: building it is part of the cost
            shutil.rmtree(folder, ignore_errors=True)
            clock.seconds = 0.0
            r = fit(cfg, train, valid, cache_dir=folder if cached else None, log=None)
            spent.append(clock.seconds)
            gaps.append(r.best["val_loss"] - r.best["train_loss"])
            aucs.append(r.best["val_auc"])
        if one_pass is None:
            one_pass = float(np.mean(spent))
        print(f"| {label} | {np.mean(gaps):+.3f} | {np.mean(aucs):.4f} | {np.mean(spent):.1f} | "
              f"{np.mean(spent) / one_pass:.2f}x |", flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
