"""`python -m tune finalize [RUN]`: retrain the search's winners with several seeds and test them once.

A pipeline of stages, each owned by its module: read the data (here: this module is the only place in the
project that reads the test split, `load_test`) → retrain each architecture's best trial with K seeds
(tune.evaluation.retrain) → score every seed, ensemble and flip TTA on test and compare them
(tune.evaluation.compare) → measure costs (tune.evaluation.costs) → export the winners and the picked model
(tune.evaluation.picking) → Grad-CAM panels (tune.evaluation.panels) and, with --extra-test, the winners'
evaluation. tune/cli/finalize.py renders and writes what it returns. Nothing chooses by test numbers:
thresholds come from valid, and the shipped seed is the one with the best valid score.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tune.core import UserError
from tune.data.heldout import check_for_testing
from tune.data.images import ImageSet, check_video_leaks, load_split
from tune.data.perturb import Condition
from tune.data.sources import Source, find_sources
from tune.evaluation.compare import compare_models
from tune.evaluation.costs import add_costs
from tune.evaluation.evaluate import Evaluated, evaluate, load_models
from tune.evaluation.on_cluster import Cluster, cluster_address, connected, trial_resources
from tune.evaluation.panels import Panel, finalize_panels
from tune.evaluation.picking import export_picked, export_winners, record_pick
from tune.evaluation.retrain import Candidate, Data, candidates, retrain
from tune.runs.files import Comparison
from tune.runs.info import RunInfo, cache_dirs, load_heldout, load_train_valid, read_run, record_moved_data
from tune.runs.layout import Run
from tune.runs.pareto import PickRule
from tune.training.records import ModelRecord

Log = Callable[[str], None]


@dataclass(frozen=True, kw_only=True)
class FinalizeOptions:
    """How a run is finalized: `finalize`'s flags, and what search's finalize step passes on."""

    seeds: int = 3  # retrainings per model, seeds SEED..SEED+K-1
    baseline: bool = False  # also train the notebook's fixed recipe per architecture
    cache_dir: Path | None = None  # the decoded-image and feature caches' folder (None: no cache)
    jobs: int = 1  # (model, seed) pairs retrained at once, each in its own process
    extra_test: list[Path] | None = None  # more sources the exported winners are evaluated on
    data: Path | None = None  # where the run's dataset root is now, if it moved
    valid_extra: list[Path] | None = None  # where its held-out validation sources are now, if they moved
    pick: PickRule | None = None  # which model is shipped in models/picked/ (None: best)
    address: str | None = None  # a Ray cluster for the retrainings and the extra tests (None: run.json's, if any)


@dataclass
class Finalized:
    """What a finalize found, for tune/cli/finalize.py to write: the comparison, each exported winner's Grad-CAM
    panel on the test split (by arch) and, with --extra-test, the winners' evaluation on those sources."""
    run: Run
    cmp: Comparison
    panels: dict[str, Panel]
    extra_test: Evaluated | None = None


def run_finalize(run_dir: Path, options: FinalizeOptions, *, log: Log = print) -> Finalized:
    """Retrain, test, compare, export the winners (models/) and the picked model (models/picked/), and compute
    the panels and the extra test sets' evaluation; write no result file of its own (tune/cli/finalize.py writes
    each once). `data` and `valid_extra`: where the run's data is now, if it moved (the same images, by content;
    run.json then points there)."""
    if options.seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {options.seeds}")
    extra = find_sources(options.extra_test) if options.extra_test else None  # fails before any training
    info = read_run(run_dir, data=options.data, valid_extra=options.valid_extra)
    cands, picked = candidates(info, options.baseline, log, options.pick)
    of = read_data(info, cands, options.cache_dir, extra or [])
    first = next(iter(of.values()))
    log(f"finalize {info.name}: {len(cands)} model(s) x {options.seeds} seed(s); {len(first.train)} train / "
        f"{len(first.valid)} valid / {len(first.test)} test images"
        f"{''.join(f'; held-out {h.split}: {len(h)}' for h in first.held_out)}; {info.threads} thread(s) per "
        "training, as the trials")
    _, features = cache_dirs(info, options.cache_dir)
    address = cluster_address(options.address, info.meta.address)
    with connected(address) if address else contextlib.nullcontext():
        if address:
            log(f"finalize: retraining on the Ray cluster at {address}; the run folder {info.run.path}, the data "
                "and the caches must be at the same paths on every node")
        cluster = Cluster(*trial_resources(info.space)) if address else None
        records = retrain(info, cands, options.seeds, of, features, options.jobs, log, cluster)
        return finish(info, cands, records, first, picked, extra, bool(address), log)


def finish(info: RunInfo, cands: list[Candidate], records: dict[str, list[ModelRecord]],
           first: Data, picked: dict[str, Any], extra: list[Source] | None, cluster: bool, log: Log) -> Finalized:
    """Compare, cost, export and explain the retrained models; evaluate the winners on the extra test sets
    (their scoring on the cluster when the retrainings ran there)."""
    test = first.test
    cmp = compare_models(info, cands, records, first.valid, test, picked)
    add_costs(info, cmp, log)
    export_winners(info, cmp, records)
    record_pick(info, picked)
    export_picked(info, cmp, records, picked)
    panels = finalize_panels(info.run, cmp, test, log)  # here: the test split is in memory only in this module
    evaluation = evaluate(load_models(info.run.winners()), extra, [Condition()], log=log,
                          cluster=cluster) if extra else None
    return Finalized(info.run, cmp, panels, evaluation)


def read_data(info: RunInfo, cands: list[Candidate], cache_dir: Path | None,
              extra: list[Source]) -> dict[str, Data]:
    """Each candidate's splits, prepared by its resize mode (the same files: tune/data/decode.py), after checking
    that no test image is also a training, validation, held-out or extra-test image."""
    decoded, _ = cache_dirs(info, cache_dir)
    by_mode = {m: Data(*load_train_valid(info, cache_dir, m), load_test(info, decoded, m),
                       load_heldout(info, cache_dir, m)) for m in sorted({c.config.resize for c in cands})}
    first = next(iter(by_mode.values()))  # held-out sources select, they never train
    record_moved_data(info, first.held_out)
    check_for_testing(first.test, extra, first.train, first.valid, first.held_out)
    return {c.name: by_mode[c.config.resize] for c in cands}


def load_test(info: RunInfo, decoded_cache: Path | None, resize: str = "bilinear") -> ImageSet:
    """The one read of the test split in the whole project (tests assert that)."""
    check_video_leaks(info.root)
    return load_split(info.root, "test", info.image_size, skip_bad=info.skip_bad, cache_dir=decoded_cache,
                      resize=resize, prep=info.prep)
