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

Module-level classes: Ray pickles the searcher with the experiment and restores it by name.
"""

from __future__ import annotations

import logging
import math
import pickle
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from tune.runs.trials import ended_how
from tune.search.budget import Budget, Usage

log = logging.getLogger(__name__)
STEP = "training_iteration"  # the step Ray's OptunaSearch reports intermediate values at (= the epoch here)


@contextmanager
def studies_at(url: str) -> Iterator[None]:
    """Every Optuna RDB storage unpickled inside this block opens `url`, the run's optuna.db where the run
    folder is now, whatever URL the pickle names.

    Ray pickles the searcher, its Optuna storages included, into the experiment (tuner.pkl, searcher-state-*.pkl)
    and `Tuner.restore` unpickles them in the driver. Their URL is the absolute path the run had when it
    started: after a move the file is not there ("unable to open database file"), and after a copy the copy's
    trials would go into the original's optuna.db. The run's place is the driver's to say, never a pickle's.
    """
    from optuna.storages import RDBStorage

    pickled = RDBStorage.__setstate__

    def reopened(self: RDBStorage, state: dict[Any, Any]) -> None:
        pickled(self, {**state, "url": url})

    RDBStorage.__setstate__ = reopened  # type: ignore[method-assign]
    try:
        yield
    finally:
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
        # never to on_trial_result: record it as an intermediate value too, so every epoch is there.
        if result and isinstance(result.get(self.metric), (int, float)) and STEP in result:
            try:
                with warnings.catch_warnings():  # a step already there (reported before a restore) is kept
                    warnings.simplefilter("ignore", UserWarning)
                    ot_trial.report(float(result[self.metric]), int(result[STEP]))
            except Exception as e:  # noqa: BLE001 - e.g. a NaN of a diverged first epoch
                log.debug("intermediate value of %s not recorded: %s", trial_id, e)
        if how in FINISHED:
            super().on_trial_complete(trial_id, result, error=False)  # COMPLETE with its best value
            return
        from optuna.trial import TrialState

        state = TrialState.FAIL if how == "errored" else TrialState.PRUNED
        try:
            self._ot_study.tell(ot_trial, state=state)  # PRUNED keeps its last intermediate value
        except Exception as e:  # noqa: BLE001 - as Ray's own: a bookkeeping problem must not stop the search
            log.warning("could not tell Optuna that trial %s ended %s: %s", trial_id, how, e)
        self._completed_trials.add(trial_id)

    def _tell_all(self, trial_id: str, ot_trial: Any, how: str, result: dict[str, Any] | None) -> None:
        """A multi-objective study: COMPLETE with every value, PRUNED when ASHA stopped it, else FAIL."""
        from optuna.trial import TrialState

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


class ArchSearcher(Searcher):
    """One Ray searcher for a search of several architectures, each with its own Optuna study.

    Each architecture keeps its HonestOptunaSearch (study RUN-ARCH in optuna.db, its own TPE, its own
    define-by-run space), so TPE models like with like. This searcher decides only *which* study
    samples the next trial, by the budget (tune/search/budget.py): with a trial count, the architecture with
    the most expected trial time left (longest work first, so the search does not end on one long trial
    alone); with a time budget, the one with the least trial time used and committed
    (tune.search.budget.Budget.next_arch). A free slot is filled from whichever architecture still has
    budget.

    Pickled whole (its studies included) into the experiment, as Ray's OptunaSearch pickles itself.
    """

    def __init__(self, children: dict[str, HonestOptunaSearch], budget: Budget, *, metric: str, mode: str) -> None:
        super().__init__(metric=metric, mode=mode)
        self.children = children
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

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__.copy(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
        self.began = {}  # the previous session's clock: its trials begin again when they next report
