"""Chained frozen-backbone caches: what a search over unfrozen_blocks 0..4 pays before it trains.

    python benchmarks/chained_cache.py [--n-per-class 500] [--size 128] [--threads 2]

For each backbone, measured side by side in one run on the built-in data (train, flipped train, valid):
  one pass       the frozen backbone over the images once (the depth with the shortest prefix);
  independent    every depth 0..4 built from the images, as before chaining (one pass per depth);
  chained        every depth 0..4 as the search builds them now: the shortest prefix from the images,
                 each longer prefix derived from the previous one by running only the units in between.
The target is chained <= 1.3x one pass. It also trains one epoch at depths 0 and 4 from the chained cache
and live (no cache) and prints the largest difference of the validation metrics (expected: exactly 0).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}
if any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):  # must be set before the process starts
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from tune.data.builtin import generate_demo_data  # noqa: E402
from tune.data.images import load_split  # noqa: E402
from tune.training import cache  # noqa: E402
from tune.training.config import TrainConfig  # noqa: E402
from tune.training.loop import fit, make_model  # noqa: E402

BACKBONES = [("efficientnet_lite0", "packaged"), ("mobilenet_v2", "none")]
DEPTHS = [0, 1, 2, 3, 4]


def build(models: list, train, valid, cfg: TrainConfig, folder: Path, *, chained: bool) -> float:
    t0 = time.perf_counter()
    if chained:
        cache.precompute(models, train, valid, cfg, cache_dir=folder)
    else:
        for i, m in enumerate(models):  # a folder per depth: nothing to derive from
            cache.precompute([m], train, valid, cfg, cache_dir=folder / str(i))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-per-class", type=int, default=500)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-chain-"))
    generate_demo_data(work / "data", n_per_class=a.n_per_class, size=a.size, seed=0)
    train = load_split(work / "data", "train", a.size)
    valid = load_split(work / "data", "valid", a.size)
    print(f"{len(train)} train (+ flipped) / {len(valid)} valid images at {a.size}px, {a.threads} threads\n")
    print("| backbone | one pass | independent, depths 0..4 | chained, depths 0..4 | chained / one pass | "
          "independent / chained | max val-metric diff, chained cache vs live |")
    print("|---|---|---|---|---|---|---|", flush=True)
    for arch, weights in BACKBONES:
        cfgs = [TrainConfig.of(arch=arch, weights=weights, image_size=a.size, unfrozen_blocks=d, epochs=1,
                               threads=a.threads) for d in DEPTHS]
        models = [make_model(c) for c in cfgs]
        one = build([models[-1]], train, valid, cfgs[0], work / f"{arch}-one", chained=True)  # shortest prefix only
        chained = build(models, train, valid, cfgs[0], work / f"{arch}-chained", chained=True)
        independent = build(models, train, valid, cfgs[0], work / f"{arch}-independent", chained=False)
        diff = 0.0
        for c in (cfgs[0], cfgs[-1]):  # the longest prefix (derived last) and the shortest
            cached = fit(c, train, valid, cache_dir=work / f"{arch}-chained", log=None).history[-1]
            live = fit(c.replace(use_cache=False), train, valid, cache_dir=None, log=None).history[-1]
            diff = max(diff, *(abs(cached[k] - live[k]) for k in ("val_loss", "val_auc", "val_accuracy")))
        print(f"| {arch} | {one:.1f} s | {independent:.1f} s | {chained:.1f} s | **{chained / one:.2f}x** | "
              f"{independent / chained:.1f}x | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
