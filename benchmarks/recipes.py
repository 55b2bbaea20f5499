"""Does the search beat a strong fixed recipe? Three ways to a detector, on the same splits and seeds.

    python benchmarks/recipes.py DATA [--space search_spaces/demo.yaml] [--seeds 3] [--run NAME] [--recipes a,b]

(a) the notebook's recipe: custom CNN 32/64/128 + Dense(128) + Dropout(0.5), Adam 1e-4, batch 32, early
    stopping on val loss with patience 3, at most 30 epochs;
(b) a fixed fine-tuning recipe, no search: EfficientNet-Lite0 (packaged ImageNet weights), the last 4 blocks
    and the head conv trainable (unfrozen_blocks 5), head Dropout(0.2) + Linear, Adam with lr 1e-3 for the
    head and 3e-4 for the backbone, batch 32, random flips, 6 epochs, the epoch with the best val AUC kept;
(c) `python -m tune search` + finalize with the space (each architecture's best trial retrained with the
    same seeds, tested once); its answer is the architecture with the best mean VALID score over its seeds,
    so nothing here is chosen on test.

All at the space's image size. (a) and (b) run one seed per process with the trials' thread count, as many
at once as the cores allow; (c) is the real command. Prints each one's test ROC-AUC per seed, mean ± 95% t
half-width, wall time, and the paired bootstrap p of (c) against (b) (the same resamples of the test images,
each resample's AUC averaged over seeds). `--run NAME` reuses a finished search + finalize of that name.
Targets (issue "Win on real data"): on the built-in data, (c) >= (b) in mean test AUC and (c) >= (a) + 0.08.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from tune.cli import fast_allocator  # noqa: E402
from tune.core import cache_root  # noqa: E402
from tune.data.images import load_split  # noqa: E402
from tune.inference import probabilities  # noqa: E402
from tune.metrics.bootstrap import Predictor, bootstrap, paired_p_value, resamples_for, t_interval  # noqa: E402
from tune.metrics.classification import AT_HALF, binary_metrics  # noqa: E402
from tune.models.registry import DEFAULT_ARCH  # noqa: E402
from tune.runs.files import Comparison  # noqa: E402
from tune.runs.layout import Run  # noqa: E402
from tune.search.space import load_space  # noqa: E402
from tune.training.config import TrainConfig  # noqa: E402
from tune.training.records import PREDICTIONS, read_predictions  # noqa: E402

NOTEBOOK = {"arch": DEFAULT_ARCH, "epochs": 30, "patience": 3}  # everything else: TrainConfig's defaults
FINE_TUNE = {"arch": "efficientnet_lite0", "weights": "packaged", "unfrozen_blocks": 5, "head_sizes": (),
             "dropout": 0.2, "lr": 1e-3, "backbone_lr_mult": 0.3, "batch_size": 32, "hflip": True, "epochs": 6,
             "patience": 6, "monitor": "val_auc"}


def one_seed(job: tuple[dict, int, int, int, str]) -> tuple[np.ndarray, int, float]:
    """Train one recipe with one seed in this process; (test P(fake), epochs run, seconds)."""
    from tune.training.loop import fit

    fast_allocator()
    recipe, seed, size, threads, data = job
    splits = [load_split(Path(data), s, size, cache_dir=cache_root() / "decoded") for s in ("train", "valid", "test")]
    cfg = TrainConfig.of(**recipe, image_size=size, seed=seed, threads=threads)
    t0 = time.perf_counter()
    r = fit(cfg, splits[0], splits[1], cache_dir=cache_root() / "features", log=None)
    return probabilities(r.model, splits[2].x), len(r.history), time.perf_counter() - t0


def fixed_recipe(recipe: dict, seeds: list[int], size: int, threads: int, data: Path) -> tuple[np.ndarray, list, float]:
    jobs = max(1, min(len(seeds), (os.cpu_count() or 1) // threads))
    t0 = time.perf_counter()
    # spawn, not fork: forking a process whose OpenMP threads already ran can deadlock
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        done = list(pool.map(one_seed, [(recipe, s, size, threads, str(data)) for s in seeds]))
    return np.stack([d[0] for d in done]), [d[1] for d in done], time.perf_counter() - t0


def searched(data: Path, space: Path, seeds: int, name: str | None) -> tuple[np.ndarray, str, float, Path]:
    """(c): search + finalize (or a finished one), its answer chosen on valid: (test P per seed, label, seconds)."""
    t0 = time.perf_counter()
    if name is None:
        name = time.strftime("recipes-%Y%m%d-%H%M%S")
        subprocess.run([sys.executable, "-m", "tune", "search", "--data", str(data), "--space", str(space),
                        "--name", name, "--seeds", str(seeds)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - t0
        run = Run(ROOT / "results" / name)
    else:  # a finished run: from its search's start to its comparison's writing
        run = Run(Path(name) if Path(name, "run.json").is_file() else ROOT / "results" / name)
        seconds = run.comparison("json").stat().st_mtime - float(run.read().started_at or 0.0)
    tuned = Comparison.load(run.comparison("json")).tuned
    mode = run.read().mode
    pick = (max if mode == "max" else min)(tuned, key=lambda r: float(np.mean(r.valid_scores)))
    probs = np.stack([read_predictions(run.finalize(pick.name, s) / PREDICTIONS)[2] for s in pick.seeds])
    return probs, f"{pick.model}, searched and finalized (chosen on valid)", seconds, run.path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", type=Path, help="dataset root (ROOT/{train,valid,test}/{Fake,Real})")
    ap.add_argument("--space", type=Path, default=ROOT / "search_spaces" / "demo.yaml")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--run", help="a finished search + finalize: its folder, or its name under results/ "
                    "(instead of running (c))")
    ap.add_argument("--recipes", default="a,b", help="which fixed recipes to run beside (c): a, b or a,b "
                    "(they are deterministic on CPU: one already measured need not run again)")
    a = ap.parse_args()
    wanted = [k for k in a.recipes.split(",") if k]
    if not wanted or set(wanted) - {"a", "b"}:
        raise SystemExit(f"error: bad --recipes {a.recipes!r}: expected a, b or a,b")
    fast_allocator()
    space = load_space(a.space)
    data = a.data.absolute()
    seeds = list(range(space.seed, space.seed + a.seeds))
    threads = max(1, int(space.resources.cpus_per_trial))
    test = load_split(data, "test", space.image_size, cache_dir=cache_root() / "decoded")
    y = test.y.astype(int)
    rows = {}
    p_c, label_c, s_c, run_dir = searched(data, a.space, a.seeds, a.run)
    rows["c"] = (label_c, p_c, None, s_c)
    for key, recipe, label in (("a", NOTEBOOK, "(a) the notebook's recipe (custom CNN, Adam 1e-4, patience 3)"),
                               ("b", FINE_TUNE, "(b) fixed fine-tuning recipe (Lite0, last 5 units, 6 epochs)")):
        if key not in wanted:
            continue
        probs, epochs, seconds = fixed_recipe(recipe, seeds, space.image_size, threads, data)
        rows[key] = (label, probs, epochs, seconds)
    aucs = {k: [binary_metrics(y, p)["auc"] for p in r[1]] for k, r in rows.items()}
    print(f"\n{len(y)} test images at {space.image_size}px, seeds {seeds}; (c) is run {run_dir.name}\n")
    print("| recipe | test ROC-AUC per seed | mean ± 95% t half-width | wall |")
    print("|---|---|---|---|")
    for k in [*wanted, "c"]:
        label, _, epochs, seconds = rows[k]
        mean, half = t_interval(aucs[k])
        ran = f" (ran {', '.join(map(str, epochs))} epochs)" if epochs else ""
        print(f"| {label if k != 'c' else '(c) ' + label}{ran} | {', '.join(f'{v:.4f}' for v in aucs[k])} | "
              f"{mean:.4f} ± {half:.4f} | {seconds:.0f} s |")
    print()
    if "b" in rows:
        boot = bootstrap(y, {k: Predictor(rows[k][1], {AT_HALF: [0.5] * len(seeds)}) for k in ("b", "c")},
                         rng=resamples_for(test.fingerprint))
        diff = float(np.mean(aucs["c"]) - np.mean(aucs["b"]))
        p = paired_p_value(boot["c"]["auc"], boot["b"]["auc"], diff)
        print(f"(c) - (b): {diff:+.4f} mean test AUC, paired bootstrap p = {p:.3f} (target: (c) >= (b))")
    if "a" in rows:
        print(f"(c) - (a): {float(np.mean(aucs['c']) - np.mean(aucs['a'])):+.4f} (target >= +0.08)")


if __name__ == "__main__":
    main()
