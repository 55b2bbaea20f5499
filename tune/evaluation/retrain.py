"""finalize's first stage: which models are retrained (each architecture's best trial, its baseline, the picked
trial), and their retrainings, one (model, seed) at a time or several at once in worker processes.

A retraining trains exactly as a trial does (tune.training.loop.fit, early stopping on valid, the trial's thread
count), then scores valid and test, as they are and flipped (for flip test-time augmentation). Each seed's
folder gets record.json last, so an interrupted finalize redoes only the seeds without one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from tune.core import UserError
from tune.core.processes import worker_pool
from tune.data.images import ImageSet
from tune.evaluation.ensembles import add_missing_scores, save_scores
from tune.evaluation.jobs import capped_jobs
from tune.evaluation.picking import PICKED, picked_trial
from tune.metrics.classification import (
    AT_HALF,
    AT_VALID,
    THRESHOLD_RULES,
    binary_metrics,
    metric_value,
    youden_threshold,
)
from tune.models.hparams import HParamKind
from tune.runs.info import RunInfo, trial_config
from tune.runs.leaderboard import load_leaderboard
from tune.runs.pareto import PickRule, parse_pick
from tune.training.config import TrainConfig
from tune.training.loop import fit
from tune.training.records import RECORD, ModelRecord, run_record, save_training

Log = Callable[[str], None]


@dataclass(frozen=True)
class Data:
    """The splits one resize mode prepares: what a retraining trains, selects and is tested on."""

    train: ImageSet
    valid: ImageSet
    test: ImageSet
    held_out: list[ImageSet]  # held-out validation sources: they select, they never train

    def all(self) -> list[ImageSet]:
        return [self.train, self.valid, self.test, *self.held_out]


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


def fingerprints(info: RunInfo, data: Data) -> dict[str, Any]:
    held_out = {"valid_extra": info.heldout} if data.held_out else {}  # a run without held-out sources records none
    return {"train_fingerprint": data.train.fingerprint, "valid_fingerprint": data.valid.fingerprint,
            "test_fingerprint": data.test.fingerprint, "root": str(info.root), **held_out}


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
    now = fingerprints(info, data)
    same_data = all(old.data.get(k) == v for k, v in now.items() if k != "root")
    return old if same_config and same_data else None


def retrain_seed(c: Candidate, seed: int, info: RunInfo, data: Data, features: Path | None,
                 log: Log, node: str | None = None) -> ModelRecord:
    """Retrain one candidate with one seed, score valid and test (plain and flipped), save; reuse a finished
    record of the same thing. `node`: the Ray node it runs on, recorded (None: finalize's own machine)."""
    train, valid, test = data.train, data.valid, data.test
    out = info.run.finalize(c.name, seed)
    cfg = c.config.replace(seed=seed)
    old = done_record(c, seed, info, data)
    if old is not None:
        added = add_missing_scores(out, cfg.threads, valid, test)
        log(f"[{c.name}] seed {seed}: already done, kept ({out})"
            + ("; its flipped and valid predictions were missing (an older finalize), scored now" if added else ""))
        return old
    if (out / RECORD).is_file():
        log(f"[{c.name}] seed {seed}: the saved result is for another config or data; redoing it")
    log(f"[{c.name}] seed {seed}: training {'trial ' + c.trial_id if c.trial_id else 'the notebook recipe'}")
    result = fit(cfg, train, valid, extra=data.held_out, cache_dir=features, log=lambda s: log(f"  seed {seed} {s}"))
    threshold = youden_threshold(valid.y, result.val_probs)
    save_training(out, result)
    p_test = save_scores(out, result.model, valid, test)
    record = replace(run_record(cfg, result, fingerprints(info, data)), name=c.name, kind=c.kind, trial_id=c.trial_id,
                     run=info.name, metric=info.metric, preprocess=info.prep.to_dict(),
                     valid_score=metric_value(result.best, info.metric),  # by the run's rule (mean_auc, ...)
                     threshold=threshold, threshold_rule=THRESHOLD_RULES[AT_VALID],
                     test={AT_HALF: binary_metrics(test.y, p_test, 0.5),
                           AT_VALID: binary_metrics(test.y, p_test, threshold)}, node_id=node)
    record.save(out / RECORD)  # last: its presence marks this seed as done
    return record


def retrain(info: RunInfo, cands: list[Candidate], seeds: int, of: dict[str, Data], features: Path | None, jobs: int,
            log: Log, cluster: Executor | None = None) -> dict[str, list[ModelRecord]]:
    """Every candidate's `seeds` retrainings (seeds info.seed..+seeds-1), reusing finished ones; `of` maps a
    candidate to the data of its resize mode. `jobs` > 1 retrains that many (model, seed) pairs at once in separate
    processes, each with the trials' thread count, so the numbers are the same as sequentially, only sooner.
    `cluster` (tune.evaluation.on_cluster.Cluster): each pending pair is a Ray task there instead."""
    threads_before = torch.get_num_threads()
    try:
        # Longest first: a long retraining started last would run alone at the end while the other slots idle.
        pending = sorted(((c, i) for c in cands for i in range(seeds)
                          if done_record(c, info.seed + i, info, of[c.name]) is None), key=lambda ci: -ci[0].trial_s)
        if pending and (cluster is not None or (jobs > 1 and len(pending) > 1)):
            if cluster is None:
                jobs = capped_jobs(jobs, len(pending), list({id(s): s for d in of.values() for s in d.all()}.values()),
                                   log)
            else:
                log(f"finalize: {len(pending)} retraining(s) as Ray tasks on the cluster")
            # Each job is sent the ImageSets pickled: the decoded cache's path, which it maps (tune/data/mapped.py).
            # An interrupt kills the workers at once; a rerun redoes the seeds without a record.json.
            with cluster if cluster is not None else worker_pool(jobs) as pool:
                # a Ray task passes its own log (tagged with the node) and node; a local worker prints
                task = retrain_seed if cluster is not None else functools.partial(retrain_seed, log=print)
                futures = {(c.name, i): pool.submit(task, c, info.seed + i, info, of[c.name], features)
                           for c, i in pending}
                return {c.name: [futures[c.name, i].result() if (c.name, i) in futures else
                                 retrain_seed(c, info.seed + i, info, of[c.name], features, log)
                                 for i in range(seeds)] for c in cands}
        return {c.name: [retrain_seed(c, info.seed + i, info, of[c.name], features, log) for i in range(seeds)]
                for c in cands}
    finally:
        torch.set_num_threads(threads_before)  # fit changes it for the whole process
