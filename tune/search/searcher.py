"""Ray's OptunaSearch, telling Optuna how each trial really ended.

Ray's OptunaSearch tells Optuna that every finished trial is COMPLETE with its last value, also
one that ASHA stopped after 2 of 10 epochs: TPE then models a 2-epoch score as a final result,
and fANOVA mixes budgets. Here a trial stopped by the scheduler is PRUNED (its per-epoch values
were reported as intermediate values along the way, so TPE ranks it by how far it got and how
well, after the complete ones); a trial that ran to its end, early-stopped on patience or
diverged (the trial says so in its result's `ended`) is COMPLETE with its best value; an errored
trial is FAIL. Each Optuna trial carries its Ray trial id as the user attribute `ray_trial_id`.

With several objectives (a space's `objectives:`, tune/search/objectives.py) `metric` and `mode` are lists, the
first being the score ASHA cuts on: a finished trial is COMPLETE with every objective's value, a trial ASHA
stopped is PRUNED (Optuna keeps no intermediate values for a multi-objective study), an errored one FAIL, and a
finished trial missing a value (a cost not measured) FAIL too, so the study never holds half a point.

Module-level classes: Ray pickles the searcher with the experiment and restores it by name; what it pickles is
the searcher's own data and each study's plan, never an Optuna sampler (StudyPlan).
"""

from __future__ import annotations

import logging
import math
import pickle
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from optuna.exceptions import OptunaError
from optuna.storages import RDBStorage
from optuna.trial import Trial, TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from tune.runs.trials import CUT_SHORT, ended_how
from tune.search.budget import Budget, Usage
from tune.search.objectives import sampler_for
from tune.search.space import DefineByRun

log = logging.getLogger(__name__)
STEP = "training_iteration"  # the step Ray's OptunaSearch reports intermediate values at (= the epoch here)


_reopen_at: str | None = None  # set by studies_at: where the run's optuna.db is now


@contextmanager
def studies_at(url: str) -> Iterator[None]:
    """Every Optuna study that a searcher unpickled inside this block opens is `url`, the run's optuna.db where
    the run folder is now, whatever URL its plan names.

    Ray pickles the searcher into the experiment (tuner.pkl, searcher-state-*.pkl) and `Tuner.restore` unpickles
    it in the driver. The plans' URL is the absolute path the run had when it started: after a move the file is
    not there ("unable to open database file"), and after a copy the copy's trials would go into the original's
    optuna.db. The run's place is the driver's to say, never a pickle's.
    """
    global _reopen_at
    _reopen_at = url
    pickled = RDBStorage.__setstate__

    def reopened(self: RDBStorage, state: dict[Any, Any]) -> None:  # a searcher an earlier version pickled whole
        pickled(self, {**state, "url": url})

    RDBStorage.__setstate__ = reopened  # type: ignore[method-assign]
    try:
        yield
    finally:
        _reopen_at = None
        RDBStorage.__setstate__ = pickled  # type: ignore[method-assign]


FINISHED = ("completed", "early_stopped", "diverged")  # ended this way, a trial is COMPLETE with its value(s)

class HonestOptunaSearch(OptunaSearch):
    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        params = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None:
            ot_trial.set_user_attr("ray_trial_id", trial_id)  # links optuna.db to the leaderboard
        return params

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or trial_id in self._completed_trials:
            super().on_trial_complete(trial_id, result, error)
            return
        how = ended_how(result, "ERROR" if error else "TERMINATED")
        if isinstance(self.metric, list):
            self._tell_all(trial_id, ot_trial, how, result)
            return
        # Ray hands a trial's last result (ASHA's stopping one, or the final epoch) only to this method,
        # never to on_trial_result: record it as an intermediate value too, so every epoch is there. A report that
        # is no epoch (CUT_SHORT: the deadline cut one short) repeats the kept score at no new step: not recorded.
        if result and isinstance(result.get(self.metric), (int, float)) and STEP in result and CUT_SHORT not in result:
            try:
                with warnings.catch_warnings():  # a step already there (reported before a restore) is kept
                    warnings.simplefilter("ignore", UserWarning)
                    ot_trial.report(float(result[self.metric]), int(result[STEP]))
            except Exception as e:  # noqa: BLE001 - e.g. a NaN of a diverged first epoch
                log.debug("intermediate value of %s not recorded: %s", trial_id, e)
        if how in FINISHED:
            super().on_trial_complete(trial_id, result, error=False)  # COMPLETE with its best value
            return

        state = TrialState.FAIL if how == "errored" else TrialState.PRUNED
        try:
            self._ot_study.tell(ot_trial, state=state)  # PRUNED keeps its last intermediate value
        except Exception as e:  # noqa: BLE001 - as Ray's own: a bookkeeping problem must not stop the search
            log.warning("could not tell Optuna that trial %s ended %s: %s", trial_id, how, e)
        self._completed_trials.add(trial_id)

    def _tell_all(self, trial_id: str, ot_trial: Any, how: str, result: dict[str, Any] | None) -> None:
        """A multi-objective study: COMPLETE with every value, PRUNED when ASHA stopped it, else FAIL."""
        values = [(result or {}).get(m) for m in self.metric]
        finite = all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
        # As with one objective: a stopped trial (by ASHA or the time budget) is PRUNED, an errored one FAIL.
        state = ((TrialState.COMPLETE if finite else TrialState.FAIL) if how in FINISHED
                 else TrialState.FAIL if how == "errored" else TrialState.PRUNED)
        try:
            self._ot_study.tell(ot_trial, [float(v) for v in values] if state == TrialState.COMPLETE else None,
                                state=state)
        except Exception as e:  # noqa: BLE001 - as Ray's own: a bookkeeping problem must not stop the search
            log.warning("could not tell Optuna that trial %s ended %s: %s", trial_id, how, e)
        self._completed_trials.add(trial_id)


@dataclass(frozen=True)
class StudyPlan:
    """What an architecture's Optuna search is made from: its space, its study in optuna.db and its sampler's
    kind and seed. The searcher saves this, never the sampler: a sampler's internals change between Optuna
    releases (5.1.0's NSGA-II holds a lock, which cannot be pickled) and the study in optuna.db is the truth."""

    space: DefineByRun
    study_name: str
    url: str  # the run's optuna.db when the plan was made (studies_at re-points it where the run is now)
    sampler: str  # "tpe" or "nsga2" (tune.search.objectives.sampler_for)
    seed: int
    startup: int
    metric: str | list[str]
    mode: str | list[str]

    def open(self, url: str | None = None) -> HonestOptunaSearch:
        """The study loaded from optuna.db with a new sampler. Reopened after a stop, the sampler's seed moves on
        by the study's trial count, so its random draws are not the first session's again; trials that were
        running are linked back to their Ray trials, and finished ones are known as finished."""
        storage = RDBStorage(url or self.url)
        done = len(optuna_study_trials(storage, self.study_name))
        search = HonestOptunaSearch(space=self.space, metric=self.metric, mode=self.mode, study_name=self.study_name,
                                    storage=storage, sampler=sampler_for(self.sampler, self.seed + done, self.startup))
        for t in search._ot_study.get_trials(deepcopy=False):
            ray_id = t.user_attrs.get("ray_trial_id")
            if ray_id is None:
                continue
            if t.state == TrialState.RUNNING:
                search._ot_trials[ray_id] = Trial(search._ot_study, t._trial_id)
            else:
                search._completed_trials.add(ray_id)
        return search


def optuna_study_trials(storage: Any, name: str) -> list[Any]:
    """The trials a study of `storage` holds, none when the study is not there yet."""
    try:
        return storage.get_all_trials(storage.get_study_id_from_name(name), deepcopy=False)
    except (KeyError, OptunaError):
        return []


class ArchSearcher(Searcher):
    """One Ray searcher for a search of several architectures, each with its own Optuna study.

    Each architecture keeps its HonestOptunaSearch (study RUN-ARCH in optuna.db, its own TPE, its own
    define-by-run space), so TPE models like with like. This searcher decides only *which* study
    samples the next trial, by the budget (tune/search/budget.py): with a trial count, the architecture with
    the most expected trial time left (longest work first, so the search does not end on one long trial
    alone); with a time budget, the one with the least trial time used and committed
    (tune.search.budget.Budget.next_arch). A free slot is filled from whichever architecture still has
    budget.

    What Ray pickles (tuner.pkl, and its searcher state at every experiment snapshot) is this searcher's own
    data: which architecture owns each trial, the trial time charged, the budget, and each study's plan. The
    Optuna searches are rebuilt from the plans on unpickling, their studies read back from optuna.db.
    """

    def __init__(self, plans: dict[str, StudyPlan], budget: Budget, *, metric: str, mode: str) -> None:
        super().__init__(metric=metric, mode=mode)
        self.plans = plans
        self.children = {arch: plan.open() for arch, plan in plans.items()}
        self.budget = budget
        self.owner: dict[str, str] = {}  # Ray trial id -> its architecture
        self.seconds: dict[str, float] = {}  # Ray trial id -> trial time charged so far
        self.began: dict[str, float] = {}  # Ray trial id -> driver time its training began, this session
        self.ended: set[str] = set()  # Ray trial ids that completed or errored

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # every study has its space, metric and mode already

    def usage(self) -> dict[str, Usage]:
        """Per architecture: trials handed out, running and finished, trial time used and still committed."""
        out = {}
        for arch in self.children:
            mine = [t for t, a in self.owner.items() if a == arch]
            done = [self.seconds.get(t, 0.0) for t in mine if t in self.ended]
            mean = sum(done) / len(done) if done else 0.0
            live = [self.seconds.get(t, 0.0) for t in mine if t not in self.ended]
            out[arch] = Usage(handed=len(mine), running=len(live), used_s=sum(self.seconds.get(t, 0.0) for t in mine),
                              committed_s=sum(max(0.0, mean - s) for s in live), finished=len(done), mean_s=mean)
        return out

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        arch = self.budget.next_arch(self.usage())
        if arch is None:
            return Searcher.FINISHED  # every architecture has spent its trials or its time
        config = self.children[arch].suggest(trial_id)
        if isinstance(config, dict):
            self.owner[trial_id] = arch
        return config

    def _seen(self, trial_id: str, result: dict[str, Any] | None) -> None:
        """Charge a trial the wall time it has held its slot since its training began, by the driver's clock.
        Ray's time_total_s leaves out the checkpoint written at each report, which undercharged an
        architecture of many short epochs (4.6 s of 20 s for custom_cnn's 113 epochs, 1.7 s for
        mobilenet_v2's 40, in the same slot time) and so handed it more slots."""
        if not (result and trial_id in self.owner and isinstance(result.get("time_total_s"), (int, float))):
            return
        now, reported = time.time(), float(result["time_total_s"])
        # A trial restored by --resume begins again here, with what it was charged before the stop.
        began = self.began.setdefault(trial_id, now - max(reported, self.seconds.get(trial_id, 0.0)))
        self.seconds[trial_id] = max(reported, now - began)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self._seen(trial_id, result)
        if trial_id in self.owner:
            self.children[self.owner[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        self._seen(trial_id, result)
        self.ended.add(trial_id)
        if trial_id in self.owner:
            self.children[self.owner[trial_id]].on_trial_complete(trial_id, result, error)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "children"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if "plans" in state:  # (a searcher pickled by an earlier version holds its Optuna searches whole)
            self.children = {arch: plan.open(_reopen_at) for arch, plan in self.plans.items()}

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__getstate__(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__setstate__(pickle.load(f))
        self.began = {}  # the previous session's clock: its trials begin again when they next report
        self.fail_lost()

    def fail_lost(self) -> None:
        """Optuna trials still RUNNING whose Ray trial this snapshot does not know: the stop came between Optuna
        creating the trial and Ray's next snapshot, so Ray will never run it. FAIL, so the study holds no trial
        that never ends."""
        for child in self.children.values():
            for ray_id, ot_trial in list(child._ot_trials.items()):
                if ray_id not in self.owner and ray_id not in child._completed_trials:
                    child._ot_study.tell(ot_trial, state=TrialState.FAIL)
                    child._completed_trials.add(ray_id)
                    log.info("Optuna trial %s (Ray %s) was lost in the interruption: FAIL", ot_trial.number, ray_id)
