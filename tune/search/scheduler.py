"""One Ray scheduler for a search of several architectures: an ASHA per architecture, and the deadline.

ASHA compares a trial with the others at the same rung (epoch). With every architecture in one
Tuner, a single ASHA would compare a custom CNN's epoch-2 AUC with a pretrained backbone's and stop
the weaker family wholesale; so each architecture gets its own ASHA (the same grace period and
reduction factor), and rungs compare like with like. Past the time budget's deadline a running trial
stops itself between two batches (tune/training/deadline.py) and says so in a last report that is no
epoch (`CUT_SHORT`): that report never reaches its ASHA, so rungs hold completed epochs only. A trial
that reports an epoch past the deadline is stopped there (tune/search/budget.py).

Each stop is remembered with its reason, which the progress callback writes into the trial's last
result (`ended`), so the leaderboard and Optuna read how a trial ended from the trial itself.
A module-level class: Ray pickles the scheduler with the experiment.
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from tune.runs.trials import CUT_SHORT
from tune.search.budget import Budget
from tune.training.deadline import OUT_OF_TIME

STOPPED_BY_ASHA = "stopped_by_asha"
STOPPED_BY_BUDGET = OUT_OF_TIME  # one value for the budget's stops, mid-epoch (the trial's) or at an epoch's end


class ArchScheduler(TrialScheduler):
    def __init__(self, budget: Budget, *, metric: str, mode: str, max_t: int, grace_period: int,
                 reduction_factor: int) -> None:
        super().__init__()
        self.budget = budget
        self._metric = metric
        self.children = {a: ASHAScheduler(time_attr="epoch", metric=metric, mode=mode, max_t=max_t,
                                          grace_period=grace_period, reduction_factor=reduction_factor)
                         for a in budget.archs}
        self.stopped: dict[str, str] = {}  # trial id -> why the scheduler stopped it

    def _of(self, trial: Any) -> ASHAScheduler:
        return self.children[trial.config["arch"]]

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True  # every ASHA got its metric and mode when it was made

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._of(trial).on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self._of(trial).on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        if CUT_SHORT in result:  # the trial stopped itself mid-epoch at the deadline: no epoch for ASHA's rungs
            self.stopped[trial.trial_id] = STOPPED_BY_BUDGET
            return TrialScheduler.STOP
        decision = self._of(trial).on_trial_result(tune_controller, trial, result)
        if self.budget.expired():
            self.stopped[trial.trial_id] = STOPPED_BY_BUDGET
            return TrialScheduler.STOP
        if decision == TrialScheduler.STOP:
            self.stopped[trial.trial_id] = STOPPED_BY_ASHA
        return decision

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        self._of(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._of(trial).on_trial_remove(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller: Any) -> Any:
        # every ASHA runs pending trials first come, first served: any of them answers for all
        return next(iter(self.children.values())).choose_trial_to_run(tune_controller)

    def debug_string(self) -> str:
        return "\n".join(f"{arch}: {s.debug_string()}" for arch, s in self.children.items())

    def why_stopped(self, trial_id: str) -> str:
        return self.stopped.get(trial_id, STOPPED_BY_ASHA)
