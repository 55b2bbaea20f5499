"""EfficientNet-Lite0/1/2 side by side: what the larger offline backbones cost per image on a CPU.

    python benchmarks/backbones.py [--steps 9] [--batch 32] [--threads 1] [--units 5]

For each backbone (packaged ImageNet weights) and input size (128 and 224 px), in one process:
  forward   all units frozen, inference mode: what the frozen-feature cache pays per image;
  train     the last `--units` units trainable: one live step (frozen prefix forward, then forward, backward
            and Adam through the trainable units and the head), as training without the cache runs it.
The backbones take turns step by step (Lite0, Lite1, Lite2, Lite0, ...), so a burst of load from elsewhere
on a shared machine lands on all of them alike; img/s is the batch over the median step time, and the ratio
against Lite0 is the median of the per-turn ratios (trust the ratios over the absolute numbers).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import tune.cli  # noqa: E402  (sets the allocator environment the project's commands run with)
from tune.models.detector import count_params  # noqa: E402
from tune.models.registry import build_model  # noqa: E402

ARCHS = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
SIZES = [128, 224]


def step_times(steps: dict[str, Callable[[], None]], turns: int) -> dict[str, list[float]]:
    """Seconds per step of each backbone, taking turns; one warm-up step each first (first-call allocations)."""
    for step in steps.values():
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(turns):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    return times


def forward_step(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        with torch.inference_mode():
            model(x)
    return step


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    loss_fn = nn.BCEWithLogitsLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=9, help="timed steps per backbone, size and kind")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--units", type=int, default=5, help="trainable units from the top when training")
    a = ap.parse_args()
    tune.cli.fast_allocator()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    frozen = {n: build_model(n, unfrozen_blocks=0).eval() for n in ARCHS}
    trained = {n: build_model(n, unfrozen_blocks=a.units).train() for n in ARCHS}
    for m in (*frozen.values(), *trained.values()):
        m.to(memory_format=torch.channels_last)  # as tune.training.loop.make_model does
    y = (torch.arange(a.batch) % 2).float()
    rows = []
    for size in SIZES:
        x = torch.rand(a.batch, 3, size, size).contiguous(memory_format=torch.channels_last)
        fwd = step_times({n: forward_step(frozen[n], x) for n in ARCHS}, a.steps)
        trn = step_times({n: train_step(trained[n], x, y) for n in ARCHS}, a.steps)
        for name in ARCHS:
            trainable, fixed = count_params(trained[name])
            cells = [f"{(trainable + fixed) / 1e6:.2f} M", f"{trainable / 1e6:.2f} M", f"{size} px"]
            for times in (fwd, trn):
                ratio = statistics.median(t0 / t for t0, t in zip(times[ARCHS[0]], times[name]))
                cells += [f"{a.batch / statistics.median(times[name]):.1f}", f"{ratio:.2f}x"]
            rows.append(f"| {name} | " + " | ".join(cells) + " |")
        print(f"{size} px measured", flush=True)

    print(f"\nbatch {a.batch}, {a.threads} thread(s), {a.steps} timed steps each; train = last {a.units} units "
          "+ head trainable, one live step\n")
    print("| backbone | parameters | trainable | size | forward img/s | vs Lite0 | train img/s | vs Lite0 |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
