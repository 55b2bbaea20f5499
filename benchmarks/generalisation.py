"""Does selecting by a held-out generator pick detectors that do better on an unseen one? The three-generator
protocol on the built-in data, one search, several selection rules on the same trials.

    python benchmarks/generalisation.py [--n-per-class 500] [--test-n-per-class 1000] [--size 128]
                                        [--trials 6] [--epochs 6] [--repeats 3] [--resamples 1000]
    python benchmarks/generalisation.py --zoo [--n-per-class N] [--size S] [--trials T] [--epochs E]

With --zoo, the cross-family protocol instead: the generator zoo's families, each in turn trained on, another
held out for validation, the rest tested (benchmarks/zoo_protocol.py says how). A small run on 2 cores:
--zoo --n-per-class 200 --size 64 --trials 2 --epochs 3 (docs/heldout.md has its numbers and time).

Data: `demo-data` with seeds 0, 1 and 2 (three autoencoder generators), every one cutting the photos with
tiles seed 0, so no photo region crosses roles (tests/test_demo_data.py checks it):
  gen0 (seed 0): train and valid; its test split is the in-domain test;
  gen1 (seed 1): its valid split is the held-out validation source (`--valid-extra`);
  gen2 (seed 2, --test-n-per-class): its test split is the unseen-generator test, read only at the end.

Each of --repeats searches (custom_cnn and efficientnet_lite0, TPE, search metric val_auc, space seed 0, 1,
...) records val_auc and xval_auc at every epoch of every trial. Every trial runs its full course (ASHA's
grace period and the patience are the epoch cap), so what the trials trained does not depend on any rule;
TPE's trials after its random start-up were guided by val_auc, as a default search is. Each rule then picks
its (trial, epoch) from the same trials: the best value of val_auc (in-domain), xval_auc (held-out),
mean_auc or min_auc (tune.metrics.classification) over every epoch of every trial, ties to the first. Each pick is
retrained from its recorded config and seed up to that epoch (checked: the retraining's per-epoch numbers
equal the recorded ones bit for bit) and scored once on both test sets: AUC with a 95% stratified
bootstrap interval, and a paired bootstrap against the in-domain rule's pick on the same resamples. The
rank correlation of val_auc and xval_auc over all (trial, epoch) points says how much the held-out source
could change a choice at all. About 4-5 minutes per search on the 2-core VM (the datasets are generated
once, into the cache).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}
if any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from tune.core import cache_root  # noqa: E402
from tune.metrics import bootstrap as stats  # noqa: E402
from tune.metrics.classification import AT_HALF, best_index, binary_metrics, metric_value  # noqa: E402

RULES = ("val_auc", "xval_auc", "mean_auc", "min_auc")
TESTS = {"in-domain (gen0 test)": 0, "unseen generator (gen2 test)": 2}  # test name -> generator
SPACE = """
metric: val_auc
mode: max
seed: {seed}
image_size: {size}
budget: {{trials: {trials}, max_epochs: {epochs}, grace_period: {epochs}, reduction_factor: 2, patience: {epochs}}}
resources: {{cpus_per_trial: 1}}
fixed: {{batch_size: 32{fixed}}}
architectures:
  custom_cnn:
    lr: {{type: loguniform, low: 3.0e-4, high: 3.0e-3}}
    conv_blocks: {{type: int, low: 3, high: 4}}
    base_width: {{type: categorical, choices: [16, 32]}}
    head_sizes: {{type: categorical, choices: [[64], [128]]}}
    dropout: {{type: uniform, low: 0.0, high: 0.5}}
  efficientnet_lite0:
    weights: packaged
    lr: {{type: loguniform, low: 3.0e-4, high: 3.0e-3}}
    unfrozen_blocks: {{type: int, low: 0, high: 3}}
    head_sizes: {{type: categorical, choices: [[64], [128], [128, 32]]}}
    dropout: {{type: uniform, low: 0.0, high: 0.5}}
"""


def generator(seed: int, n: int, size: int) -> Path:
    """demo-data --seed SEED --tiles-seed 0, generated once into the cache."""
    from tune.data.builtin import generate_demo_data

    out = cache_root() / f"demo-data-n{n}-s{size}-seed{seed}-tiles0"
    if not (out / "test").is_dir():
        print(f"generating generator {seed} ({n} per class) into {out}", flush=True)
        generate_demo_data(out, n_per_class=n, size=size, seed=seed, tiles_seed=0)
    return out


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def start_ray() -> None:
    import ray

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)


def search_and_pick(work: Path, train: Path, held_out: tuple[str, Path], tests: dict[str, Path], seed: int,
                    a: argparse.Namespace, name: str, per_arch: bool = False) -> dict[str, Any]:
    """One search (space seed `seed`) on the dataset `train` with the held-out validation source `held_out` (its name
    in xval[NAME]_auc, a folder of Fake/ and Real/). Every rule's pick from its trials (with `per_arch`, also each
    architecture's own pick by each rule), each pick retrained and scored on every test split (read only here, at
    the end). Returns {"points", "trials", "picks": {(method, rule): (arch, trial, epoch row)}, "probs": {(arch,
    trial, epoch): {test: P(fake)}}, "tests": {test: ImageSet}, "seconds", "sizes"}; method "any" is the pick over
    all architectures."""
    import ray
    import torch

    from tune.data.images import load_split
    from tune.inference import probabilities
    from tune.runs.info import load_heldout, load_train_valid, read_run, trial_config
    from tune.runs.layout import Run
    from tune.runs.trials import read_trials
    from tune.search.driver import SearchOptions, run_search
    from tune.training.loop import fit

    t0 = time.time()
    link = work / held_out[0]  # the source's name in xval[NAME]_auc
    if not link.exists():
        link.symlink_to(held_out[1], target_is_directory=True)
    space = work / f"space-{name}.yaml"
    fixed = "".join(f", {k}: {v}" for k, v in (kv.split("=", 1) for kv in a.fixed))
    space.write_text(SPACE.format(seed=seed, size=a.size, trials=a.trials, epochs=a.epochs, fixed=fixed))
    started = not ray.is_initialized()  # the zoo's six searches share one Ray session (its start-up is slow)
    if started:
        start_ray()
    try:
        run_dir = run_search(SearchOptions(space=space, data=train, name=name, results=work / "results",
                                           cache_dir=work / "cache", valid_extra=[link]))
    finally:
        if started:
            ray.shutdown()
    info = read_run(run_dir)
    trials = {(arch, t.trial_id): t.results for arch in info.space["architectures"]
              for t in read_trials(Run(run_dir), info.meta, arch)}
    points = [(arch, tid, r) for (arch, tid), rows in trials.items() for r in rows]  # every (trial, epoch)
    methods = {"any": points} | ({arch: [p for p in points if p[0] == arch] for arch in info.space["architectures"]}
                                 if per_arch else {})
    picks = {(m, rule): pts[best_index([metric_value(r, rule) for *_, r in pts], "max")]
             for m, pts in methods.items() for rule in RULES}

    train_set, valid = load_train_valid(info, work / "cache")
    extra = load_heldout(info, work / "cache")
    test_sets = {t: load_split(root, "test", a.size) for t, root in tests.items()}  # read once, at the end
    probs: dict[tuple[str, str, int], dict[str, np.ndarray]] = {}
    threads = torch.get_num_threads()
    for (_, rule), (arch, tid, row) in picks.items():
        key = (arch, tid, int(row["epoch"]))
        if key in probs:
            continue
        # The pick is its trial's best epoch by `rule` (ties: the first), so retraining with that monitor, no
        # early stop, up to that epoch keeps exactly its weights; the recorded numbers must come back bit for bit.
        cfg = trial_config(info, arch, tid).replace(monitor=rule, patience=a.epochs)
        result = fit(cfg, train_set, valid, extra=extra, cache_dir=work / "cache" / "features", log=None,
                     stop_after=key[2])
        same = all(got[k] == rec[k] for got, rec in zip(result.history, trials[arch, tid])
                   for k in ("train_loss", "val_loss", "val_auc", "xval_auc"))
        assert result.best_epoch == key[2] and same, (key, result.best_epoch, same)
        probs[key] = {t: probabilities(result.model, s.x) for t, s in test_sets.items()}
    torch.set_num_threads(threads)
    return {"points": points, "picks": picks, "probs": probs, "tests": test_sets, "seconds": time.time() - t0,
            "sizes": (len(train_set), len(valid), len(extra[0]), {t: len(s) for t, s in test_sets.items()})}


def one_search(work: Path, gens: dict[int, Path], seed: int, a: argparse.Namespace) -> dict[str, Any]:
    """The three-generator protocol's search (space seed `seed`): every rule's pick scored on both test sets:
    {"points", "rows": {test: [(rule, pick, val_auc, xval_auc, auc, low, high, vs)]}, "seconds", "sizes"}."""
    found = search_and_pick(work, gens[0], ("gen1", gens[1] / "valid"), {t: gens[g] for t, g in TESTS.items()}, seed,
                            a, name=f"generalisation-seed{seed}")
    picks = {rule: pick for (_, rule), pick in found["picks"].items()}
    probs, tests = found["probs"], found["tests"]
    ref = (picks["val_auc"][0], picks["val_auc"][1], int(picks["val_auc"][2]["epoch"]))
    rows: dict[str, list[tuple[Any, ...]]] = {}
    for name, s in tests.items():
        y = s.y.astype(int)
        boot = stats.bootstrap(y, {k: stats.Predictor(p[name][None, :], {AT_HALF: [0.5]}) for k, p in probs.items()},
                               rng=stats.resamples_for(s.fingerprint), resamples=a.resamples)
        ref_auc = float(binary_metrics(y, probs[ref][name])["auc"])
        rows[name] = []
        for rule, (arch, tid, row) in picks.items():
            key = (arch, tid, int(row["epoch"]))
            auc = float(binary_metrics(y, probs[key][name])["auc"])
            p = stats.paired_p_value(boot[key]["auc"], boot[ref]["auc"], auc - ref_auc)
            rows[name].append((rule, key, row["val_auc"], row["xval_auc"], auc, *stats.percentile_interval(
                boot[key]["auc"]), None if key == ref else (auc - ref_auc, p)))
    return {"points": found["points"], "rows": rows, "seconds": found["seconds"], "sizes": found["sizes"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-per-class", type=int, default=500, help="generators 0 and 1 (default: %(default)s)")
    ap.add_argument("--test-n-per-class", type=int, default=1000, help="generator 2: its test split is 15%% of it")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--trials", type=int, default=6, help="per architecture")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3, help="searches, with space seeds 0..R-1 (default: %(default)s)")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--fixed", nargs="*", default=[], metavar="KEY=VALUE", help="training options fixed for every "
                    "trial, e.g. input=npr, resize=crop, augment=cnndetection (the baseline: none)")
    ap.add_argument("--zoo", action="store_true", help="the cross-family protocol on the generator zoo (every family "
                    "--n-per-class; --test-n-per-class and --repeats do not apply)")
    a = ap.parse_args()
    os.environ.setdefault("TUNE_OFFLINE", "1")
    from tune.search.cluster import loopback_only, quiet_ray

    if a.zoo:
        import zoo_protocol  # next to this script

        quiet_ray()
        loopback_only()
        zoo_protocol.run(a, search_and_pick, start_ray, RULES)
        return
    t_start = time.time()
    gens = {0: generator(0, a.n_per_class, a.size), 1: generator(1, a.n_per_class, a.size),
            2: generator(2, a.test_n_per_class, a.size)}
    print(f"data ready in {time.time() - t_start:.0f}s", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-generalisation-"))
    quiet_ray()
    loopback_only()
    results = [one_search(work, gens, seed, a) for seed in range(a.repeats)]

    n_train, n_valid, n_held, n_tests = results[0]["sizes"]
    print(f"\nbuilt-in data at {a.size}px: train/valid gen0 ({n_train}/{n_valid}), held-out validation gen1 valid "
          f"({n_held}); tests: " + ", ".join(f"{n} {k}" for n, k in n_tests.items()) + f". {a.repeats} searches of "
          f"{a.trials} trials per architecture x {a.epochs} epochs (space seeds 0..{a.repeats - 1}).")
    for seed, r in enumerate(results):
        pts = r["points"]
        rho = spearman([p[2]["val_auc"] for p in pts], [p[2]["xval_auc"] for p in pts])
        print(f"\nsearch seed {seed}: {len(pts)} (trial, epoch) points; Spearman rank correlation of val_auc and "
              f"xval_auc over them {rho:.3f}; {r['seconds']:.0f}s")
        print("| rule | pick (arch, trial, epoch) | val_auc | xval_auc | " + " | ".join(
            f"{name} AUC [95% CI] | vs in-domain pick" for name in TESTS) + " |")
        print("|---|---|---|---|" + "---|---|" * len(TESTS))
        for k, (rule, key, val, xval, *_) in enumerate(r["rows"][next(iter(TESTS))]):
            cells = []
            for name in TESTS:
                *_, auc, lo, hi, vs = r["rows"][name][k]
                cells += [f"{auc:.3f} [{lo:.3f}, {hi:.3f}]", "reference" if rule == "val_auc" else "same pick"
                          if vs is None else f"{vs[0]:+.3f}, p = {vs[1]:.3f}"]
            print(f"| {rule} | {key[0]} {key[1]} epoch {key[2]} | {val:.3f} | {xval:.3f} | " + " | ".join(cells) + " |")
    print("\nmean over searches of each rule's pick's test AUC (and how many searches it picked other weights than "
          "the in-domain rule):")
    for k, rule in enumerate(RULES):
        means = [float(np.mean([r["rows"][name][k][4] for r in results])) for name in TESTS]
        other = sum(r["rows"][next(iter(TESTS))][k][-1] is not None for r in results)
        print(f"  {rule:<9} " + "  ".join(f"{name} {m:.3f}" for name, m in zip(TESTS, means))
              + f"  (other pick in {other} of {a.repeats})")
    print(f"\ntotal {time.time() - t_start:.0f}s")


if __name__ == "__main__":
    main()
