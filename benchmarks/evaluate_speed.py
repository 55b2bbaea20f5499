"""Side by side, in one run: `evaluate`'s images/s against the model's raw batched forward.

    python benchmarks/evaluate_speed.py [--arch mobilenet_v2] [--size 128] [--n-per-class 250]
                                        [--rounds 15] [--threads 2]

Same model, same images, same torch threads, in one process. The machine is shared, so the
measurements are short and alternate (ABBA order, round by round), each round's ratio compares
measurements taken seconds apart, and medians over rounds are reported:
(raw)      the model's forward on pre-decoded, pre-converted float batches of 64 (inference mode):
           the ceiling, with no decoding or resizing at all;
(scoring)  evaluate's per-image path: decode every file once, resize to the model's size, batched forward;
(perturb)  the same with --perturb jpeg=75 blur=1: 3 conditions from each decode, per image x condition;
(command)  the whole `evaluate` minus its scoring: the fixed cost of the 1000-resample bootstrap, the
           tables, the plots and the files, in seconds (it does not grow with the number of images
           the way scoring does).
The model is a real-sized detector built from a TrainConfig (random weights: speed does not depend
on them) and saved with a record, as finalize exports one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}
if any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):  # as the CLI runs, set before the process starts
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tune.cli.evaluate import write_evaluation  # noqa: E402
from tune.core import atomic_torch_save, atomic_write_json, file_sha256  # noqa: E402
from tune.data.builtin import generate_demo_data  # noqa: E402
from tune.data.images import decode_image, to_float  # noqa: E402
from tune.data.perturb import parse_perturb  # noqa: E402
from tune.data.sources import find_sources  # noqa: E402
from tune.evaluation import evaluate as ev  # noqa: E402
from tune.inference import load  # noqa: E402
from tune.training.config import TrainConfig  # noqa: E402
from tune.training.loop import make_model  # noqa: E402


def save_model(path: Path, arch: str, size: int) -> Path:
    cfg = TrainConfig.of(arch=arch, image_size=size, weights="none", seed=0)
    atomic_torch_save(path, make_model(cfg).state_dict())
    atomic_write_json(path.with_suffix(".json"), {"config": cfg.to_dict(), "threshold": 0.5, "seed": 0,
                                                  "weights_sha256": file_sha256(path)})
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="mobilenet_v2")
    ap.add_argument("--size", type=int, default=128, help="the model's input size")
    ap.add_argument("--n-per-class", type=int, default=250,
                    help="built-in dataset size; its valid and test splits are the two sources")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        generate_demo_data(root, n_per_class=a.n_per_class, seed=0)
        sources = find_sources([root / "test", root / "valid"])
        n = sum(len(s.files) for s in sources)
        loaded = load(save_model(Path(tmp) / "models" / f"{a.arch}.pth", a.arch, a.size))
        x = np.stack([decode_image(f, a.size) for s in sources for f in s.files])
        batches = [to_float(x[i:i + 64]).contiguous(memory_format=torch.channels_last) for i in range(0, n, 64)]
        clean, perturbed = parse_perturb(None), parse_perturb(["jpeg=75", "blur=1"])

        def raw() -> float:
            t0 = time.perf_counter()
            with torch.inference_mode():
                for b in batches:
                    torch.sigmoid(loaded.model(b))
            return n / (time.perf_counter() - t0)

        def scoring(conditions: list) -> float:
            t0 = time.perf_counter()
            ev.score_all(sources, {a.arch: loaded}, conditions, skip_bad=False, log=lambda s: None)
            return n * len(conditions) / (time.perf_counter() - t0)

        def fixed_cost() -> float:
            """Seconds of the whole command beyond its scoring, scoring timed just before it."""
            t0 = time.perf_counter()
            ev.score_all(sources, {a.arch: loaded}, clean, skip_bad=False, log=lambda s: None)
            t1 = time.perf_counter()
            done = ev.evaluate([loaded], sources, clean, log=lambda s: None)
            write_evaluation(Path(tmp) / "out", done, lambda s: None)
            return (time.perf_counter() - t1) - (t1 - t0)

        jobs = {"raw": raw, "scoring": lambda: scoring(clean), "perturb": lambda: scoring(perturbed)}
        raw()  # warm-up: first-call allocations and kernel choices
        rates: dict[str, list[float]] = {k: [] for k in jobs}
        ratios: dict[str, list[float]] = {"scoring": [], "perturb": []}
        for r in range(a.rounds):
            order = list(jobs) if r % 2 == 0 else list(reversed(jobs))  # ABBA: drift in the load cancels
            got = {k: jobs[k]() for k in order}
            for k, v in got.items():
                rates[k].append(v)
            for k in ratios:
                ratios[k].append(got[k] / got["raw"])
            print(f"round {r + 1}: " + ", ".join(f"{k} {got[k]:.1f}/s" for k in jobs) +
                  f" (ratios {ratios['scoring'][-1]:.2f}, {ratios['perturb'][-1]:.2f})", flush=True)
        costs = [fixed_cost() for _ in range(3)]
        med = {k: statistics.median(v) for k, v in rates.items()}
        print(f"\n{a.arch} at {a.size} px, {n} images ({len(sources)} sources) of the built-in data (128 px JPEGs), "
              f"{a.threads} torch thread(s); medians of {a.rounds} alternating rounds:")
        print("| measurement | images/s | ratio to the raw forward (median of per-round ratios) |\n|---|---|---|")
        print(f"| raw batched forward, pre-decoded | {med['raw']:.1f} | 1 |")
        print(f"| evaluate: decode + resize + forward | {med['scoring']:.1f} | "
              f"**{statistics.median(ratios['scoring']):.2f}x** |")
        print(f"| evaluate --perturb jpeg=75 blur=1, per image x condition | {med['perturb']:.1f} | "
              f"{statistics.median(ratios['perturb']):.2f}x |")
        print(f"\nfixed cost of the whole command beyond scoring (bootstrap, tables, plots, files): "
              f"median {statistics.median(costs):.1f} s over 3 runs")

if __name__ == "__main__":
    main()
