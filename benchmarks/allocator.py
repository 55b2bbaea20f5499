"""What `tune.cli.fast_allocator` buys a command that runs in one process (predict, evaluate, train, export).

    python benchmarks/allocator.py [--rounds 3] [--size 128] [--batch 32]

Times MobileNetV2's forward pass (random weights: speed does not depend on them) in fresh child
processes, alternating glibc's default allocator and the one `python -m tune` sets up through
mallopt, so both see the same machine drift. Prints each round and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import json, sys, time
sys.path.insert(0, {root!r})
import tune.cli
if {fast}:
    tune.cli.fast_allocator()
import torch, torchvision
torch.manual_seed(0)
model = torchvision.models.mobilenet_v2().eval()
x = torch.rand({batch}, 3, {size}, {size}).contiguous(memory_format=torch.channels_last)
model = model.to(memory_format=torch.channels_last)
with torch.inference_mode():
    model(x)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 4:
        model(x)
        n += len(x)
print(json.dumps(n / (time.perf_counter() - t0)))
"""


def rate(fast: bool, size: int, batch: int) -> float:
    # Neither child starts with the settings in its environment (glibc would apply them at start-up):
    # the fast one gets them only from the runtime call; the other is told glibc's own default
    # (65536 mmap'd chunks), which also makes fast_allocator leave it alone.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    if not fast:
        env["MALLOC_MMAP_MAX_"] = "65536"
    code = CHILD.format(root=str(ROOT), fast=fast, size=size, batch=batch)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    a = ap.parse_args()
    default, fast = [], []
    for i in range(a.rounds):
        default.append(rate(False, a.size, a.batch))
        fast.append(rate(True, a.size, a.batch))
        print(f"round {i + 1}: glibc default {default[-1]:6.1f} img/s   fast_allocator {fast[-1]:6.1f} img/s",
              flush=True)
    d, f = statistics.median(default), statistics.median(fast)
    print(f"MobileNetV2 forward, {a.size} px, batch {a.batch}, {os.cpu_count()} CPUs: median {d:.1f} vs {f:.1f} "
          f"img/s -> fast_allocator {f / d:.2f}x")


if __name__ == "__main__":
    main()
