"""The input pipeline and mixed precision: the inline loop against the prefetching loader, fp32 against bf16.

    python benchmarks/input_pipeline.py [--threads 2] [--epochs 2] [--precisions fp32,bf16]
                                        [--workers 0,1,2] [--n-per-class 500] [--rounds 2]

On the built-in data at 128 px, EfficientNet-Lite0 (packaged ImageNet weights, last 5 units trainable)
trains live (no feature cache: the frozen prefix runs at every step) with crop+jitter, a fresh view every
epoch, for `--epochs` epochs in each setting:
- fp32 with each of `--workers` (0: inline, each batch prepared when the step needs it, as before the
  loader; 1, 2: that many threads prepare batches ahead), which must give identical numbers;
- each other precision of `--precisions` (autocast), with the default workers.
Per setting: training images per second (the train passes' time; validation excluded), the mean epoch
time, the val AUC after the last epoch, and the ratio to the first setting. The settings run in turn in
one process, `--rounds` times, every other round in reverse order (so a load that drifts during the run
weighs on every setting alike), and rates are means over rounds: on a shared machine compare the ratios,
not the absolute rates. On a GPU
(benchmarks/gpu_check.sh) pass --precisions fp32,bf16,fp16.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import tune.training.loop as loop  # noqa: E402
from tune.cli import builtin_data, fast_allocator  # noqa: E402
from tune.data.images import load_split  # noqa: E402
from tune.training.config import TrainConfig  # noqa: E402

RECIPE = {"arch": "efficientnet_lite0", "weights": "packaged", "unfrozen_blocks": 5, "head_sizes": (),
          "dropout": 0.2, "lr": 1e-3, "backbone_lr_mult": 0.3, "monitor": "val_auc", "image_size": 128,
          "augment": "crop,jitter", "aug_strength": 0.5, "aug_views": 0, "use_cache": False, "batch_size": 32}


def timed_fit(cfg: TrainConfig, train, valid) -> dict[str, float]:
    """fit(), with the seconds its train passes took (train_one_epoch timed where fit calls it)."""
    spent: list[float] = []
    real = loop.train_one_epoch

    def timed(*a, **k) -> float:
        t0 = time.perf_counter()
        out = real(*a, **k)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        spent.append(time.perf_counter() - t0)
        return out

    loop.train_one_epoch = timed
    try:
        result = loop.fit(cfg, train, valid, log=None)
    finally:
        loop.train_one_epoch = real
    h = result.history
    return {"img_s": len(train) * len(spent) / sum(spent), "epoch_s": sum(r["epoch_time"] for r in h) / len(h),
            "auc": h[-1]["val_auc"], "loss": h[-1]["train_loss"], "precision": result.precision}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--workers", default="0,1,2", help="fp32 settings: comma-separated worker counts")
    p.add_argument("--precisions", default="fp32,bf16", help="fp32 runs once per --workers; each other once")
    p.add_argument("--n-per-class", type=int, default=None, help="built-in data size (default: its own)")
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    fast_allocator()
    torch.set_num_threads(a.threads)
    root = builtin_data(n_per_class=a.n_per_class)
    train, valid = load_split(root, "train", 128), load_split(root, "valid", 128)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"{time.strftime('%Y-%m-%d')}, {device}, {a.threads} threads; {len(train)} train / {len(valid)} valid "
          f"images, Lite0 128 px, crop+jitter live, {a.epochs} epochs per setting", flush=True)
    base = TrainConfig.of(**RECIPE, epochs=a.epochs, patience=a.epochs, threads=a.threads)
    settings = [(f"fp32, workers {w}" + (" (inline, as before)" if w == "0" else ""),
                 base.replace(workers=int(w), precision="fp32")) for w in a.workers.split(",")]
    settings += [(f"{prec}, workers auto", base.replace(precision=prec))
                 for prec in a.precisions.split(",") if prec != "fp32"]
    runs: dict[str, list[dict[str, float]]] = {name: [] for name, _ in settings}
    for k in range(a.rounds):
        for name, cfg in settings if k % 2 == 0 else settings[::-1]:
            runs[name].append(timed_fit(cfg, train, valid))
            print(f"  round {k + 1}: {name}: {runs[name][-1]['img_s']:.1f} img/s", flush=True)
    rows = [(name, {**r[0], "img_s": sum(x["img_s"] for x in r) / len(r),
                    "epoch_s": sum(x["epoch_s"] for x in r) / len(r)}) for name, r in runs.items()]
    first = rows[0][1]
    print(f"\n| setting | train img/s | ratio | epoch s | val AUC after {a.epochs} |")
    print("|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['img_s']:.1f} | {r['img_s'] / first['img_s']:.2f}x | {r['epoch_s']:.1f} | "
              f"{r['auc']:.4f} |")
    fp32 = [r for name, r in runs.items() if name.startswith("fp32")]
    same = all((x["auc"], x["loss"]) == (fp32[0][0]["auc"], fp32[0][0]["loss"]) for r in fp32 for x in r)
    print(f"\nfp32 numbers identical across worker counts: {'yes' if same else 'NO'}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
