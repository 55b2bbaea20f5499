"""Feature caches with a budget: what the depth rule and float16 save, and what float16 costs in AUC.

    python benchmarks/cache_budget.py [--n-per-class 500] [--size 128] [--threads 1] [--epochs 3]

On the built-in data with efficientnet_lite0 (packaged ImageNet weights), for the demo space's depths
(unfrozen_blocks 8..14):
  sizes      per image, each depth's frozen output as float32 and float16 against the uint8 image, and
             the disk every depth's files take (valid + train + flipped train, one view) with every depth
             stored (as before) and with the depth rule (stored only when smaller than the image);
  before     what the search spent before its Tuner, as before: valid at every depth, chained;
  fp16       one trial's training (unfrozen_blocks 8) from float32 and from float16 features: val AUC per
             epoch and the largest difference.
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

DEPTHS = range(8, 15)  # search_spaces/demo.yaml, efficientnet_lite0 unfrozen_blocks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-per-class", type=int, default=500)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-budget-"))
    generate_demo_data(work / "data", n_per_class=a.n_per_class, size=a.size, seed=0)
    train, valid = (load_split(work / "data", s, a.size) for s in ("train", "valid"))
    base = TrainConfig.of(arch="efficientnet_lite0", image_size=a.size, epochs=a.epochs, threads=a.threads,
                          batch_size=32, lr=1e-3, backbone_lr_mult=0.3, head_sizes=())
    image = 3 * a.size * a.size
    files = len(valid) + 2 * len(train)  # images per depth: valid, train, flipped train
    total = {"float32": [0, 0], "float16": [0, 0]}  # dtype -> [every depth, with the rule]
    print(f"{len(train)} train / {len(valid)} valid at {a.size} px; the uint8 image: {image / 1e3:.1f} kB")
    print("| unfrozen_blocks | frozen units | float32 kB/image | float16 kB/image | stored (fp32 / fp16) |")
    print("|---|---|---|---|---|")
    models = []
    for d in DEPTHS:
        m = make_model(base.replace(unfrozen_blocks=d))
        models.append(m)
        row = []
        for dtype in ("float32", "float16"):
            b = cache.frozen_bytes(m, a.size, dtype)
            kept = not cache.too_big(m, a.size, dtype)
            total[dtype][0] += b * files
            total[dtype][1] += b * files * kept
            row.append((b, kept))
        print(f"| {d} | {len(m.frozen)} | {row[0][0] / 1e3:.1f} | {row[1][0] / 1e3:.1f} | "
              f"{'yes' if row[0][1] else 'no'} / {'yes' if row[1][1] else 'no'} |")
    for dtype, (every, ruled) in total.items():
        print(f"{dtype}: every depth {every / 1e6:.1f} MB, with the depth rule {ruled / 1e6:.1f} MB "
              f"(one view; the decoded images: {image * (len(train) + len(valid)) / 1e6:.1f} MB)")

    t0 = time.perf_counter()
    cache.precompute(models, train, valid, base, cache_dir=work / "before", train_view=False)
    print(f"before the Tuner, as before (valid at every depth, chained): {time.perf_counter() - t0:.1f} s")

    cfg = base.replace(unfrozen_blocks=8, augment="none")
    aucs = {}
    for dtype in ("float32", "float16"):
        t0 = time.perf_counter()
        r = fit(cfg.replace(cache_dtype=dtype), train, valid, cache_dir=work / "fp", log=None)
        aucs[dtype] = [h["val_auc"] for h in r.history]
        print(f"{dtype}: val AUC per epoch {[round(v, 4) for v in aucs[dtype]]} ({time.perf_counter() - t0:.0f} s, "
              f"{r.cache_mode})")
    diff = max(abs(x - y) for x, y in zip(aucs["float32"], aucs["float16"], strict=True))
    print(f"largest val AUC difference, float16 vs float32: {diff:.4f}")


if __name__ == "__main__":
    main()
