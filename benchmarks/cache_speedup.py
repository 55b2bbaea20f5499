"""Side by side, in one run: the usual pipeline vs this project's, per epoch, on the same configs.

    python benchmarks/cache_speedup.py [--n-per-class 720] [--size 224] [--epochs 1]

(a) usual: torchvision ImageFolder + DataLoader, decode + resize every image and run the whole
    network every epoch (as in the notebook and Ray Tune's PyTorch examples);
(b) ours, --no-cache: decoded once, but the frozen backbone still runs every step;
(c) ours, cached: decoded once and the frozen backbone's output computed once (a one-time cost
    shared by every trial and epoch, printed separately).
Prints seconds per epoch, the ratio usual / cached, and the val-metric difference cached vs not.
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

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchvision import transforms as T  # noqa: E402
from torchvision.datasets import ImageFolder  # noqa: E402

from tune.data.builtin import generate_demo_data  # noqa: E402
from tune.data.images import load_split  # noqa: E402
from tune.metrics.classification import binary_metrics  # noqa: E402
from tune.training.config import TrainConfig  # noqa: E402
from tune.training.loop import fit, make_model  # noqa: E402

CONFIGS = [("mobilenet_v2", {"unfrozen_blocks": 0}), ("mobilenet_v2", {"unfrozen_blocks": 2}),
           ("mobilenet_v2", {"unfrozen_blocks": 4}), ("custom_cnn", {})]


def usual_epoch(cfg: TrainConfig, root: Path) -> tuple[float, float]:
    """One epoch of the usual pipeline; returns (seconds, val AUC)."""
    tf_train = T.Compose([T.Resize((cfg.image_size, cfg.image_size)), T.RandomHorizontalFlip(), T.ToTensor()])
    tf_eval = T.Compose([T.Resize((cfg.image_size, cfg.image_size)), T.ToTensor()])
    train = DataLoader(ImageFolder(root / "train", tf_train), batch_size=cfg.batch_size, shuffle=True)
    valid = DataLoader(ImageFolder(root / "valid", tf_eval), batch_size=64)
    model = make_model(cfg)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    t0 = time.perf_counter()
    model.train()
    for x, target in train:
        y = (target == train.dataset.class_to_idx["Fake"]).float()  # Fake = 1
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    ys, ps = [], []
    with torch.inference_mode():
        for x, target in valid:
            ys.append((target == valid.dataset.class_to_idx["Fake"]).numpy())
            ps.append(torch.sigmoid(model(x)).numpy())
    seconds = time.perf_counter() - t0
    return seconds, binary_metrics(np.concatenate(ys), np.concatenate(ps))["auc"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-per-class", type=int, default=720, help="720 -> 1008 train images")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    root = work / "data"
    t0 = time.perf_counter()
    generate_demo_data(root, n_per_class=a.n_per_class, size=a.size, seed=0)
    print(f"built-in data: {a.n_per_class} per class at {a.size}px in {time.perf_counter() - t0:.0f}s")
    t0 = time.perf_counter()
    train = load_split(root, "train", a.size, cache_dir=work / "decoded")
    valid = load_split(root, "valid", a.size, cache_dir=work / "decoded")
    print(f"decode once: {len(train)} train + {len(valid)} valid images in {time.perf_counter() - t0:.1f}s "
          f"(one-time, shared by all trials)\n")
    print(f"per-epoch seconds, {len(train)} train / {len(valid)} valid images at {a.size}px, "
          f"{a.threads} threads, batch 32\n")
    print("| config | usual (ImageFolder) | ours --no-cache | ours cached | one-time cache build | "
          "usual / cached | max val-metric diff cached vs no-cache |")
    print("|---|---|---|---|---|---|---|", flush=True)
    for arch, hp in CONFIGS:
        weights = {"weights": "none"} if arch != "custom_cnn" else {}
        cfg = TrainConfig.of(arch=arch, image_size=a.size, epochs=a.epochs, threads=a.threads, **weights, **hp)
        usual_s, _ = usual_epoch(cfg, root)
        res = {}
        for use_cache in (False, True):
            t0 = time.perf_counter()
            r = fit(cfg.replace(use_cache=use_cache), train, valid, log=None,
                    cache_dir=work / "features" if use_cache else None)
            total = time.perf_counter() - t0
            epoch = float(np.mean([h["epoch_time"] for h in r.history]))
            res[use_cache] = (epoch, total - epoch * len(r.history), r.history[-1])
        (nc_s, _, nc_h), (c_s, build_s, c_h) = res[False], res[True]
        diff = max(abs(nc_h[k] - c_h[k]) for k in ("val_loss", "val_auc", "val_accuracy"))
        name = f"{arch}" + (f" unfrozen={hp['unfrozen_blocks']}" if hp else "")
        print(f"| {name} | {usual_s:.1f} s | {nc_s:.1f} s | {c_s:.2f} s | {build_s:.1f} s | {usual_s / c_s:.1f}x "
              f"| {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
