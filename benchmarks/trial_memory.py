"""One trial's private memory by phase, at several data sizes, with the configuration held fixed.

    python benchmarks/trial_memory.py --data DIR [DIR ...] [--unfrozen 9] [--px 224] [--epochs 1]

benchmarks/scale.py sums every process of a whole search, whose two trials sample their own depths, so its
slope mixes the data size with the configurations drawn. This holds one configuration (efficientnet_lite0,
packaged weights, `--unfrozen` blocks, batch 32, one thread, a fresh feature cache) and runs `fit` once per
dataset root, each in a fresh process, sampling that process's RssAnon every 0.05 s. It prints the peak of
each phase: the splits opened (memory-mapped), the valid features built (Inputs), the epoch's training
(its train features built first), the evaluation; and the slope of the whole run's peak per 1k train images.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

CHILD = r'''
import json, sys, threading, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import torch
from tune.data.images import load_split
from tune.training import loop
from tune.training.config import TrainConfig

root, cache = Path(sys.argv[2]), Path(sys.argv[3])
unfrozen, px, epochs = (int(v) for v in sys.argv[4:7])
phase, peaks = ["start"], {}

def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024

def sample():
    while True:
        peaks[phase[0]] = max(peaks.get(phase[0], 0), anon())
        time.sleep(0.05)

def tagged(name, fn):
    def run(*a, **k):
        before, phase[0] = phase[0], name
        try:
            return fn(*a, **k)
        finally:
            phase[0] = before
    return run

threading.Thread(target=sample, daemon=True).start()
loop.Inputs.__init__ = tagged("valid features", loop.Inputs.__init__)
loop.train_one_epoch = tagged("train", loop.train_one_epoch)
loop.evaluate = tagged("evaluate", loop.evaluate)
torch.set_num_threads(1)
train = load_split(root, "train", px, cache_dir=cache / "decoded")
valid = load_split(root, "valid", px, cache_dir=cache / "decoded")
phase[0] = "splits mapped"
cfg = TrainConfig.from_dict({"arch": "efficientnet_lite0", "weights": "packaged", "unfrozen_blocks": unfrozen,
                             "epochs": epochs, "batch_size": 32, "threads": 1, "image_size": px, "lr": 1e-3})
t = time.time()
loop.fit(cfg, train, valid, cache_dir=cache, log=None)
print("RESULT", json.dumps([len(train), len(valid), round(time.time() - t), peaks]))
'''


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, nargs="+", required=True, help="dataset roots, smallest first")
    ap.add_argument("--unfrozen", type=int, default=9)
    ap.add_argument("--px", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=1)
    a = ap.parse_args()
    rows = []
    for root in a.data:
        with tempfile.TemporaryDirectory() as cache:
            out = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), str(root), cache, str(a.unfrozen),
                                  str(a.px), str(a.epochs)], capture_output=True, text=True, check=True).stdout
        line = next(line for line in out.splitlines() if line.startswith("RESULT "))
        rows.append(tuple(json.loads(line.removeprefix("RESULT "))))
    phases = ["splits mapped", "valid features", "train", "evaluate"]
    print(f"efficientnet_lite0, unfrozen {a.unfrozen}, {a.px} px, batch 32, 1 thread, {a.epochs} epoch(s); "
          "peak RssAnon MB of the trial's process by phase")
    print("| train images | valid images | " + " | ".join(phases) + " | whole run | s |")
    print("|---|---|" + "---|" * (len(phases) + 2))
    for n_train, n_valid, seconds, peaks in rows:
        print(f"| {n_train} | {n_valid} | " + " | ".join(f"{peaks.get(p, 0):.0f}" for p in phases)
              + f" | {max(peaks.values()):.0f} | {seconds} |")
    if len(rows) > 1:
        x = np.array([r[0] for r in rows]) / 1000
        y = np.array([max(r[3].values()) for r in rows])
        slope = np.polyfit(x, y, 1)[0]
        decoded = 3 * a.px * a.px / 1e3  # MB per 1k images
        print(f"slope of the whole run's peak: {slope:+.0f} MB per 1k train images ({slope / decoded:+.0%} of the "
              f"{decoded:.0f} MB decoded per 1k)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
