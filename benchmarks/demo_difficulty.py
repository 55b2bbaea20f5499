"""How hard is the built-in demo dataset? Prints generation seconds, a colour-statistics baseline and
the notebook's fixed CNN recipe's test ROC-AUC.

    python benchmarks/demo_difficulty.py [--n-per-class 500] [--size 128] [--seed 0] [--generator tconv] [--out DIR]

Targets (see tune/data/builtin.py): generation <= 60 s at the defaults; logistic regression on
per-channel mean/std <= 0.65 AUC (no colour shortcut); the CNN between 0.70 and 0.95 test AUC. --generator
checks another family of the generator zoo (tune/data/zoo/__init__.py) the same way.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

# glibc's malloc returning memory to the OS after every large tensor halves torch's CPU speed on
# small VMs; these must be set before the process starts, so re-launch once with them.
MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}
if any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from torch import nn  # noqa: E402

from tune.data.builtin import DEFAULT_N_PER_CLASS, DEFAULT_SIZE, generate_demo_data  # noqa: E402


def load_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 3, S, S) images and float labels (Fake = 1)."""
    xs, ys = [], []
    for label, cls in ((1.0, "Fake"), (0.0, "Real")):
        for f in sorted((root / split / cls).glob("*.jpg")):
            xs.append(np.asarray(Image.open(f).convert("RGB")).transpose(2, 0, 1))
            ys.append(label)
    return np.stack(xs), np.array(ys, dtype=np.float32)


def colour_auc(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> float:
    """Logistic regression on per-channel mean and std: does colour alone separate the classes?"""
    def feats(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float32) / 255
        return np.concatenate([x.mean((2, 3)), x.std((2, 3))], axis=1)

    scaler = StandardScaler().fit(feats(train[0]))
    clf = LogisticRegression(max_iter=1000).fit(scaler.transform(feats(train[0])), train[1])
    return float(roc_auc_score(test[1], clf.predict_proba(scaler.transform(feats(test[0])))[:, 1]))


def notebook_cnn() -> nn.Sequential:
    layers: list[nn.Module] = []
    for c_in, c_out in ((3, 32), (32, 64), (64, 128)):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(2048, 128), nn.ReLU(),
                         nn.Dropout(0.5), nn.Linear(128, 1))


def predict(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x[i:i + 128].float() / 255).squeeze(1)
                          for i in range(0, len(x), 128)]).numpy()


def cnn_auc(data: dict[str, tuple[np.ndarray, np.ndarray]], epochs: int, seed: int) -> tuple[float, int, int]:
    """The notebook's fixed recipe: Adam 1e-4, batch 32, flips, early stopping (patience 3) on
    validation loss with the best weights restored. Returns (test AUC, epochs run, best epoch)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    (xtr, ytr), (xva, yva), (xte, yte) = ((torch.from_numpy(x), torch.from_numpy(y))
                                          for x, y in (data["train"], data["valid"], data["test"]))
    model = notebook_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = nn.BCEWithLogitsLoss()
    best, best_state, best_epoch, bad, epoch = float("inf"), None, 0, 0, 0
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(len(xtr), generator=gen)
        for i in range(0, len(order), 32):
            idx = order[i:i + 32]
            xb = xtr[idx].float() / 255
            flip = torch.rand(len(idx), generator=gen) < 0.5
            xb[flip] = xb[flip].flip(3)
            loss = loss_fn(model(xb).squeeze(1), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        logits = predict(model, xva)
        val_loss = float(loss_fn(torch.from_numpy(logits), yva))
        print(f"  epoch {epoch:2d}  val loss {val_loss:.4f}  val AUC {roc_auc_score(yva, logits):.3f}"
              f"  ({time.perf_counter() - t0:.1f} s)", flush=True)
        if val_loss < best:
            best, best_epoch, bad = val_loss, epoch, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
            if bad >= 3:
                break
    model.load_state_dict(best_state)
    return float(roc_auc_score(yte.numpy(), predict(model, xte))), epoch, best_epoch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-per-class", type=int, default=DEFAULT_N_PER_CLASS)
    ap.add_argument("--size", type=int, default=DEFAULT_SIZE)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--generator", default="tconv", help="the zoo family making the fakes (default: %(default)s)")
    ap.add_argument("--out", type=Path, help="where to write the dataset (default: a temporary folder)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "demo"
        summary = generate_demo_data(out, n_per_class=args.n_per_class, size=args.size, seed=args.seed,
                                     generator=args.generator)
        print(f"generation: {summary['seconds']:.1f} s for {2 * args.n_per_class} images at {args.size} px")
        data = {s: load_split(out, s) for s in ("train", "valid", "test")}
    print(f"colour-statistics logistic regression test AUC: {colour_auc(data['train'], data['test']):.3f}")
    t0 = time.perf_counter()
    auc, ran, best = cnn_auc(data, args.epochs, args.seed)
    print(f"notebook CNN test AUC: {auc:.3f}  (ran {ran} epochs, best epoch {best}, "
          f"{time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
