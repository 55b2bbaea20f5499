"""`python -m tune finalize [RUN]`: retrain the search's winners with several seeds and test them once.

For each architecture the best trial (leaderboard order) is retrained from scratch with K seeds,
exactly as a trial trains (tune.training.loop.fit, early stopping on valid, the trial's thread count),
then each retrained model is scored once on the test split, as it is and with every image flipped
(for flip test-time augmentation; tune.evaluation.ensembles compares the seeds, their ensemble and TTA). This
module is the only place in the project that reads the test split (`load_test`); nothing here ever
chooses anything by test numbers: thresholds come from valid, and the shipped model is the seed with
the best valid score.

Each seed's folder gets record.json last, so an interrupted finalize redoes only unfinished seeds
(a seed finished by a finalize from before flip TTA gets its missing predictions from its saved weights).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tune.core import UserError, atomic_write_bytes, file_sha256
from tune.core.processes import worker_pool
from tune.data.heldout import check_for_testing
from tune.data.images import check_video_leaks, load_split
from tune.data.perturb import Condition
from tune.data.sources import find_sources
from tune.evaluation import ensembles, tradeoff
from tune.evaluation.costs import add_costs
from tune.evaluation.ensembles import add_missing_scores, save_scores
from tune.evaluation.evaluate import evaluate, load_models
from tune.evaluation.jobs import capped_jobs
from tune.evaluation.panels import Panel, finalize_panels
from tune.evaluation.picking import PICKED, export_picked, picked_trial, record_pick, versus_most_accurate
from tune.evaluation.video_comparison import section
from tune.metrics import bootstrap as stats
from tune.metrics.classification import (
    AT_HALF,
    AT_VALID,
    HEADLINE,
    THRESHOLD_RULES,
    better,
    binary_metrics,
    metric_value,
    youden_threshold,
)
from tune.models.hparams import HParamKind
from tune.runs.comparison import ModelRow, Resampling, Verdict
from tune.runs.files import Comparison
from tune.runs.info import (
    RunInfo,
    cache_dirs,
    load_heldout,
    load_train_valid,
    read_run,
    record_moved_data,
    trial_config,
)
from tune.runs.leaderboard import load_leaderboard
from tune.runs.pareto import PickRule, parse_pick
from tune.training.config import TrainConfig
from tune.training.loop import fit
from tune.training.records import RECORD, WEIGHTS, ModelRecord, run_record, save_training

if TYPE_CHECKING:  # names used only in annotations
    import numpy as np

    from tune.data.images import ImageSet
    from tune.evaluation.evaluate import Evaluated
    from tune.runs.layout import Run

Log = Callable[[str], None]
Data = tuple["ImageSet", "ImageSet", "ImageSet", list["ImageSet"]]  # train, valid, test, the held-out sources


@dataclass(frozen=True)
class Candidate:
    name: str  # table row and folder under finalize/: the arch, or "<arch>-baseline"
    arch: str
    kind: str  # "tuned" (the search's best trial) or "baseline" (the notebook's fixed recipe)
    config: TrainConfig  # its seed is replaced by each retraining's seed
    trial_id: str | None = None
    trial_s: float = 0.0  # the trial's wall time: parallel retrainings start longest first

    @property
    def label(self) -> str:
        return f"{self.arch} ({self.kind}, trial {self.trial_id})" if self.trial_id else f"{self.arch} (baseline)"


def baseline_config(info: RunInfo, arch: str) -> TrainConfig:
    """The notebook's recipe: TrainConfig's defaults (lr 1e-4, patience 3) and the architecture's own
    defaults (head 128, dropout 0.5; 3 conv blocks of width 32; pretrained backbones head only), at the
    search's image size and epoch cap, with the weights the search used."""
    fields: dict[str, Any] = {"arch": arch, "image_size": info.image_size, "epochs": info.max_epochs, "patience": 3,
                              "threads": info.threads, "use_cache": info.use_cache}
    w = info.space["architectures"][arch].get("weights")
    if w and w["kind"] == HParamKind.FIXED:
        fields["weights"] = w["value"]
    return TrainConfig.from_dict(fields)


def candidates(info: RunInfo, baseline: bool, log: Log,
               pick: PickRule | None = None) -> tuple[list[Candidate], dict[str, Any]]:
    """Each architecture's best trial (and baseline), and the trial `pick` names when it is none of them; with
    what run.json records of the pick."""
    board = load_leaderboard(info.run_dir)
    out = []
    for arch in info.space["architectures"]:
        scored = board[(board["arch"] == arch) & board["score"].notna()] if len(board) else board
        if len(scored):
            tid = str(scored.iloc[0]["trial_id"])
            out.append(Candidate(arch, arch, "tuned", trial_config(info, arch, tid), tid, wall_s(board, tid)))
        else:
            log(f"[{arch}] no trial with a {info.metric} yet: nothing to finalize for it")
        if baseline:
            out.append(Candidate(f"{arch}-baseline", arch, "baseline", baseline_config(info, arch)))
    if not any(c.kind == "tuned" for c in out):
        raise UserError(f"run {info.name} has no finished trials to finalize")
    named, about = picked_trial(info, board, pick or parse_pick("best"),
                                {c.trial_id: c.name for c in out if c.trial_id}, log)
    if named:
        name, arch, tid = named
        out.append(Candidate(name, arch, PICKED, trial_config(info, arch, tid), tid, wall_s(board, tid)))
    return out, about


def wall_s(board: Any, trial_id: str) -> float:
    """A trial's wall seconds on the leaderboard (0 when it has none)."""
    rows = board[board["trial_id"] == trial_id] if "wall_s" in board else []
    return float(rows.iloc[0]["wall_s"]) if len(rows) and rows.iloc[0]["wall_s"] == rows.iloc[0]["wall_s"] else 0.0


def load_test(info: RunInfo, decoded_cache: Path | None, resize: str = "bilinear") -> ImageSet:
    """The one read of the test split in the whole project (tests assert that)."""
    check_video_leaks(info.root)
    return load_split(info.root, "test", info.image_size, skip_bad=info.skip_bad, cache_dir=decoded_cache,
                      resize=resize, prep=info.prep)


def _fingerprints(info: RunInfo, data: Data) -> dict[str, Any]:
    train, valid, test, extra = data
    held_out = {"valid_extra": info.heldout} if extra else {}  # a run without held-out sources records none
    return {"train_fingerprint": train.fingerprint, "valid_fingerprint": valid.fingerprint,
            "test_fingerprint": test.fingerprint, "root": str(info.root), **held_out}


def done_record(c: Candidate, seed: int, info: RunInfo, data: Data) -> ModelRecord | None:
    """The saved record of this exact (config, data, seed), if a previous finalize finished it. Configs are
    compared as configs (a record of an earlier version lacks options added since, which mean their defaults)
    and data by content (a dataset moved elsewhere is the same data; held-out sources count too)."""
    path = info.run.finalize(c.name, seed) / RECORD
    if not path.is_file():
        return None
    old = ModelRecord.load(path)
    try:
        same_config = TrainConfig.from_dict(old.config) == c.config.replace(seed=seed)
    except (UserError, TypeError):  # a config this version cannot read is not this config
        same_config = False
    now = _fingerprints(info, data)
    same_data = all(old.data.get(k) == v for k, v in now.items() if k != "root")
    return old if same_config and same_data else None


def finalize_seed(c: Candidate, seed: int, info: RunInfo, data: Data, features: Path | None,
                  log: Log) -> ModelRecord:
    """Retrain one candidate with one seed, score valid and test (plain and flipped), save; reuse a finished
    record of the same thing."""
    train, valid, test, extra = data
    out = info.run.finalize(c.name, seed)
    cfg = c.config.replace(seed=seed)
    fingerprints = _fingerprints(info, data)
    old = done_record(c, seed, info, data)
    if old is not None:
        added = add_missing_scores(out, cfg.threads, valid, test)
        log(f"[{c.name}] seed {seed}: already done, kept ({out})"
            + ("; its flipped and valid predictions were missing (an older finalize), scored now" if added else ""))
        return old
    if (out / RECORD).is_file():
        log(f"[{c.name}] seed {seed}: the saved result is for another config or data; redoing it")
    log(f"[{c.name}] seed {seed}: training {'trial ' + c.trial_id if c.trial_id else 'the notebook recipe'}")
    result = fit(cfg, train, valid, extra=extra, cache_dir=features, log=lambda s: log(f"  seed {seed} {s}"))
    threshold = youden_threshold(valid.y, result.val_probs)
    save_training(out, result)
    p_test = save_scores(out, result.model, valid, test)
    record = replace(run_record(cfg, result, fingerprints), name=c.name, kind=c.kind, trial_id=c.trial_id,
                     run=info.name, metric=info.metric, preprocess=info.prep.to_dict(),
                     valid_score=metric_value(result.best, info.metric),  # by the run's rule (mean_auc, ...)
                     threshold=threshold, threshold_rule=THRESHOLD_RULES[AT_VALID],
                     test={AT_HALF: binary_metrics(test.y, p_test, 0.5),
                           AT_VALID: binary_metrics(test.y, p_test, threshold)})
    record.save(out / RECORD)  # last: its presence marks this seed as done
    return record


def compare(info: RunInfo, cands: list[Candidate], records: dict[str, list[ModelRecord]],
            valid: ImageSet, test: ImageSet, picked: dict[str, Any] | None = None) -> Comparison:
    """Every predictor of every model (its seeds, their ensembles and flip TTA: tune.evaluation.ensembles) scored
    on the test split by the one engine (tune.metrics.bootstrap.score): cells with t-intervals over seeds and
    bootstrap intervals over the test images, all on the same resamples, so every comparison is paired."""
    y = test.y.astype(int)
    chosen = {c.name: choose_seed(info, records[c.name]) for c in cands}
    preds = {c.name: ensembles.predictors([info.run.finalize(c.name, r.seed) for r in records[c.name]],
                                          [float(r.threshold or 0.5) for r in records[c.name]],
                                          records[c.name].index(chosen[c.name]), valid, test) for c in cands}
    cells, samples = stats.score(y, {(c.name, v): p for c in cands for v, p in preds[c.name].items()},
                                 fingerprint=test.fingerprint)
    rows, variant_rows = [], []
    for c in cands:
        recs = records[c.name]
        row = ModelRow(model=c.label, name=c.name, arch=c.arch, kind=c.kind, trial_id=c.trial_id,
                       config={**c.config.to_dict(), "seed": None}, seeds=[r.seed for r in recs],
                       valid_scores=[r.valid_score for r in recs], thresholds=[float(r.threshold or 0.5) for r in recs],
                       folder=str(info.run.finalize(c.name).relative_to(info.run.path)),
                       chosen_seed=chosen[c.name].seed, chosen_threshold=chosen[c.name].threshold,
                       cells=cells[c.name, "seeds"])
        rows.append(row)
        variant_rows += ensembles.rows(row, preds[c.name], cells, samples)
    seeds = {c.name: samples[c.name, "seeds"] for c in cands}
    best = best_models(rows, seeds)

    video = section([(row, c.config, [info.run.finalize(c.name, r.seed) for r in records[c.name]])
                     for row, c in zip(rows, cands, strict=True)], valid, test)
    return Comparison(
        run=info.name, metric=info.metric, n_test=len(y), test_fingerprint=test.fingerprint, rows=rows,
        best=best, picked=versus_most_accurate(rows, seeds, best, picked, info.mode) if picked else None,
        threshold_rules=dict(THRESHOLD_RULES), alpha=stats.ALPHA, skipped=info.meta.skipped,
        bootstrap=Resampling(stats.RESAMPLES, [stats.SEED, "the test split's fingerprint"],
                             statistic="each resample's metric is averaged over seeds"),
        ensembles=ensembles.section(variant_rows),
        tradeoff=tradeoff.summary(rows, records, seeds, stats.ALPHA) if info.heldout else None, video=video)


def choose_seed(info: RunInfo, recs: list[ModelRecord]) -> ModelRecord:
    """The seed whose model scored best on VALID (ties: the first seed). Test numbers never choose."""
    best = recs[0]
    for r in recs[1:]:
        best = r if better(r.valid_score, best.valid_score, info.mode) else best
    return best


def best_models(rows: list[ModelRow], samples: dict[str, dict[str, np.ndarray]]) -> dict[str, Verdict]:
    """The notebook named the best model by accuracy and by AUC (at 0.5); we add whether the gap is significant."""
    tuned = [r for r in rows if r.kind == "tuned"]
    out: dict[str, Verdict] = {}
    for m in HEADLINE:
        ranked = sorted(tuned, key=lambda r: -(r.cell(m).value or -math.inf))
        a = ranked[0]
        out[m] = Verdict(a.name, a.cell(m).value)
        if len(ranked) > 1:
            b, k = ranked[1], stats.key(AT_HALF, m)
            test = stats.paired(a.cell(m), b.cell(m), samples[a.name][k], samples[b.name][k])
            out[m] = Verdict(a.name, a.cell(m).value, b.name, b.cell(m).value, test,
                             tie=test is not None and test.difference == 0)
    return out


def export_models(info: RunInfo, cmp: Comparison, records: dict[str, list[ModelRecord]]) -> None:
    """models/<arch>.pth + .json: the tuned seed with the best valid score, ready for `predict`; its record is the
    seed's own, with what chose it and where it came from."""
    for row in cmp.tuned:
        rec = next(r for r in records[row.name] if r.seed == row.chosen_seed)
        src = info.run.finalize(row.name, rec.seed)
        weights = info.run.model(row.arch, "pth")
        atomic_write_bytes(weights, (src / WEIGHTS).read_bytes())
        replace(rec, arch=row.arch, run=info.name, chosen_by=f"best valid {info.metric} over seeds {row.seeds}",
                source=info.run.own(src), weights_sha256=file_sha256(weights)).save(info.run.model(row.arch, "json"))


@dataclass
class Finalized:
    """What a finalize found, for tune/cli/finalize.py to write: the comparison, each exported winner's Grad-CAM
    panel on the test split (by arch) and, with --extra-test, the winners' evaluation on those sources."""
    run: Run
    cmp: Comparison
    panels: dict[str, Panel]
    extra_test: Evaluated | None = None


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


def run_finalize(run_dir: Path, options: FinalizeOptions, *, log: Log = print) -> Finalized:
    """Retrain, test, compare, export the winners (models/) and the picked model (`pick`: models/picked/), and
    compute the panels and the extra test sets' evaluation; write no result file of its own (tune/cli/finalize.py
    writes each once). `jobs` > 1 retrains that many (model, seed) pairs at once in separate processes, each with
    the trials' thread count, so the numbers are the same as sequentially, only sooner. `data` and `valid_extra`:
    where the run's data is now, if it moved (the same images, by content; run.json then points there)."""
    seeds, cache_dir, jobs, extra_test = options.seeds, options.cache_dir, options.jobs, options.extra_test
    if seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {seeds}")
    import torch

    extra = find_sources(extra_test) if extra_test else None  # a bad --extra-test fails before any training
    info = read_run(run_dir, data=options.data, valid_extra=options.valid_extra)
    cands, picked = candidates(info, options.baseline, log, options.pick)
    decoded, features = cache_dirs(info, cache_dir)
    # each resize mode a candidate uses: the same files, as that mode prepares them (tune/data/decode.py)
    by_mode = {m: (*load_train_valid(info, cache_dir, m), load_test(info, decoded, m), load_heldout(info, cache_dir, m))
               for m in sorted({c.config.resize for c in cands})}
    train, valid, test, held_out = next(iter(by_mode.values()))  # held-out sources selected by, never trained on
    record_moved_data(info, held_out)
    check_for_testing(test, extra or [], train, valid, held_out)
    log(f"finalize {info.name}: {len(cands)} model(s) x {seeds} seed(s); {len(train)} train / {len(valid)} valid / "
        f"{len(test)} test images{''.join(f'; held-out {h.split}: {len(h)}' for h in held_out)}; {info.threads} "
        "thread(s) per training, as the trials")
    threads_before = torch.get_num_threads()
    data = (train, valid, test, held_out)
    of = {c.name: by_mode[c.config.resize] for c in cands}
    try:
        # Longest first: a long retraining started last would run alone at the end while the other slots idle.
        pending = sorted(((c, i) for c in cands for i in range(seeds) if done_record(c, info.seed + i, info, data)
                          is None), key=lambda ci: -ci[0].trial_s)
        if jobs > 1 and len(pending) > 1:
            jobs = capped_jobs(jobs, len(pending), [s for d in by_mode.values() for s in (*d[:3], *d[3])], log)
            # Each job is sent the ImageSets pickled: the decoded cache's path, which it maps (tune/data/mapped.py).
            # An interrupt kills the workers at once; a rerun redoes the seeds without a record.json.
            with worker_pool(jobs) as pool:
                futures = {(c.name, i): pool.submit(finalize_seed, c, info.seed + i, info, of[c.name], features,
                                                    print) for c, i in pending}
                records = {c.name: [futures[c.name, i].result() if (c.name, i) in futures else
                                    finalize_seed(c, info.seed + i, info, of[c.name], features, log)
                                    for i in range(seeds)] for c in cands}
        else:
            records = {c.name: [finalize_seed(c, info.seed + i, info, of[c.name], features, log)
                                for i in range(seeds)] for c in cands}
    finally:
        torch.set_num_threads(threads_before)  # fit changed it for the whole process
    cmp = compare(info, cands, records, valid, test, picked)
    add_costs(info, cmp, log)
    export_models(info, cmp, records)

    record_pick(info, picked)
    export_picked(info, cmp, records, picked)
    panels = finalize_panels(info.run, cmp, test, log)  # here: the test split is in memory only in this module
    if extra:  # the exported winners on more sources, as `evaluate`; its section joins the comparison

        winners = load_models(info.run.winners())
        return Finalized(info.run, cmp, panels, evaluate(winners, extra, [Condition()], log=log))
    return Finalized(info.run, cmp, panels)
