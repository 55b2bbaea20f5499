"""The cross-family protocol of `benchmarks/generalisation.py --zoo`: do detectors catch generators of another family?

Data: `demo-data --generator FAMILY` for every family of the zoo (tune/data/zoo/__init__.py), family number k with
seed k and tiles seed 0, so every family cuts the photos the same way and no photo region crosses roles (each role
takes its own split's tiles), and no two families share a file (other seeds, other crops).

Leave one out, for every family T in turn: one search trains on T (train and valid splits), validates held-out on
the next family V's valid split (`--valid-extra`), and its picks are tested on every family's test split: T's is
the in-domain test, V's has steered the held-out rules' choices, the other families' are unseen. Each pick is made
per selection rule (val_auc, xval_auc, mean_auc, min_auc) over all trials ("any") and over each architecture's
trials (the methods), retrained from its recorded config and scored once.

Printed: for the in-domain and the held-out rule, the matrix of test AUCs (rows: training family, columns: test
family), with two no-learning cues under each column (tune/data/zoo/cues.py: colour statistics fitted on that
family's train split, and smoothness, the mean absolute Laplacian with smoother meaning fake); then the mean
unseen-family AUC per method and rule, over every (training family, unseen family) pair, with a 95% stratified
bootstrap interval (tune/metrics/bootstrap.py: each test split's resamples drawn once, seeded by its content, and
shared by every predictor, so the per-pair resampled AUCs average into resampled means).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tune.core import cache_root
from tune.data.zoo import FAMILIES, cues
from tune.metrics import bootstrap as stats
from tune.metrics.classification import AT_HALF, binary_metrics

MATRIX_RULES = ("val_auc", "xval_auc")  # the matrices printed; the summary has every rule
CUES = ("colour", "smoothness")


def family_data(a: argparse.Namespace) -> dict[str, Path]:
    """Every family's dataset, generated once into the cache: family number k with seed k, tiles seed 0."""
    from tune.data.builtin import generate_demo_data

    data = {}
    for k, family in enumerate(FAMILIES):
        out = cache_root() / f"demo-data-n{a.n_per_class}-s{a.size}-seed{k}-tiles0-{family}"
        if not (out / "test").is_dir():
            print(f"generating {family} (seed {k}, {a.n_per_class} per class) into {out}", flush=True)
            generate_demo_data(out, n_per_class=a.n_per_class, size=a.size, seed=k, tiles_seed=0, generator=family)
        data[family] = out
    return data


def auc(y: np.ndarray, p: np.ndarray) -> float:
    return float(binary_metrics(y.astype(int), p)["auc"])


def run(a: argparse.Namespace, search: Callable[..., dict[str, Any]], start_ray: Callable[[], None],
        rules: tuple[str, ...]) -> None:
    """The protocol; `search` is generalisation.py's search_and_pick (one search, its picks by `rules` scored on the
    tests), `start_ray` its Ray start-up."""
    from tune.data.images import load_split

    t_start = time.time()
    families = list(FAMILIES)
    data = family_data(a)
    print(f"data ready in {time.time() - t_start:.0f}s", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-generalisation-zoo-"))
    held = {t: families[(i + 1) % len(families)] for i, t in enumerate(families)}  # T -> its held-out family V
    found: dict[str, dict[str, Any]] = {}
    start_ray()  # once for the six searches: on a busy 2-core machine a Ray start-up can take a minute
    try:
        for t in families:
            found[t] = search(work, data[t], (held[t], data[held[t]] / "valid"), data, 0, a, name=f"zoo-{t}",
                              per_arch=True)
            picks = {rule: pick for (m, rule), pick in found[t]["picks"].items() if m == "any"}
            print(f"trained on {t}, held-out {held[t]}: {found[t]['seconds']:.0f}s; picks: " + "; ".join(
                f"{rule} {arch} {tid} epoch {row['epoch']}" for rule, (arch, tid, row) in picks.items()), flush=True)
    finally:
        import ray

        ray.shutdown()
    tests = found[families[0]]["tests"]  # the same test splits (same files) in every search
    methods = sorted({m for f in found.values() for m, _ in f["picks"]}, key=lambda m: m != "any")

    def probs_of(t: str, method: str, rule: str, g: str) -> np.ndarray:
        arch, tid, row = found[t]["picks"][method, rule]
        return found[t]["probs"][arch, tid, int(row["epoch"])][g]

    # The cues: colour fitted on each family's train split, smoothness fitted on nothing.
    trains = {t: load_split(data[t], "train", a.size) for t in families}
    cue_probs = {("colour", t): {g: cues.colour_scores(trains[t].x, trains[t].y, s.x) for g, s in tests.items()}
                 for t in families}
    smooth = {g: cues.smoothness_scores(s.x) for g, s in tests.items()}
    for t in families:
        cue_probs["smoothness", t] = smooth  # the same scores whatever the training family

    n_train, n_valid, n_held, n_tests = found[families[0]]["sizes"]
    print(f"\nThe zoo at {a.size}px, {len(families)} families, each {n_train} train / {n_valid} valid images, the "
          f"held-out family's valid split ({n_held}), every family's test split ({next(iter(n_tests.values()))}); "
          f"one search per training family of {a.trials} trials per architecture x {a.epochs} epochs; fixed options: "
          f"{', '.join(a.fixed) or 'none (rgb, bilinear resize)'}.")
    for rule in MATRIX_RULES:
        print(f"\nTest AUC of the {rule} rule's pick (in: in-domain test; v: the held-out validation family; "
              "mean: over the unseen families)")
        print("| trained on | " + " | ".join(families) + " | mean unseen |")
        print("|---|" + "---|" * (len(families) + 1))
        for t in families:
            cells, unseen = [], []
            for g, s in tests.items():
                v = auc(s.y, probs_of(t, "any", rule, g))
                mark = " (in)" if g == t else " (v)" if g == held[t] else ""
                unseen += [] if mark else [v]
                cells.append(f"{v:.3f}{mark}")
            print(f"| {t} | " + " | ".join(cells) + f" | {np.mean(unseen):.3f} |")
        print("| colour cue (fit on the column's train) | " + " | ".join(
            f"{auc(s.y, cue_probs['colour', g][g]):.3f}" for g, s in tests.items()) + " | |")
        print("| smoothness cue (no fit) | " + " | ".join(f"{auc(s.y, smooth[g]):.3f}" for g, s in tests.items())
              + " | |")

    # Mean unseen-family AUC with intervals: every test split bootstrapped once with all predictors on it.
    unseen = {t: [g for g in families if g not in (t, held[t])] for t in families}
    boot: dict[str, dict[Any, stats.Samples]] = {}
    for g, s in tests.items():
        predictors: dict[Any, stats.Predictor] = {}
        for t in (t for t in families if g in unseen[t]):
            predictors |= {(t, m, r): stats.Predictor(probs_of(t, m, r, g)[None, :], {AT_HALF: [0.5]})
                           for m, r in found[t]["picks"]}
            predictors |= {(t, c, "cue"): stats.Predictor(cue_probs[c, t][g][None, :], {AT_HALF: [0.5]}) for c in CUES}
        boot[g] = stats.bootstrap(s.y.astype(int), predictors, rng=stats.resamples_for(s.fingerprint),
                                  resamples=a.resamples)

    def mean_unseen(m: str, r: str) -> str:
        pairs = [(t, g) for t in families for g in unseen[t]]
        point = np.mean([auc(tests[g].y, probs_of(t, m, r, g) if r != "cue" else cue_probs[m, t][g])
                         for t, g in pairs])
        lo, hi = stats.percentile_interval(np.mean([boot[g][t, m, r]["auc"] for t, g in pairs], axis=0))
        return f"{point:.3f} [{lo:.3f}, {hi:.3f}]"

    print(f"\nMean unseen-family test AUC over the {sum(map(len, unseen.values()))} (training family, unseen family) "
          f"pairs [95% bootstrap interval, {a.resamples} resamples]; method any: the rule's pick over both "
          "architectures")
    print("| method | " + " | ".join(rules) + " |")
    print("|---|" + "---|" * len(rules))
    for m in methods:
        print(f"| {m} | " + " | ".join(mean_unseen(m, r) for r in rules) + " |")
    for c in CUES:
        print(f"| {c} cue (no learning{', fit on the training family' if c == 'colour' else ''}) | "
              + mean_unseen(c, "cue") + " |" + " |" * (len(rules) - 1))
    print(f"\ntotal {time.time() - t_start:.0f}s")

