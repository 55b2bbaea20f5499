"""Ray's OptunaSearch, telling Optuna how each trial really ended.

Ray's OptunaSearch tells Optuna that every finished trial is COMPLETE with its last value, also
one that ASHA stopped after 2 of 10 epochs: TPE then models a 2-epoch score as a final result,
and fANOVA mixes budgets. Here a trial stopped by the scheduler is PRUNED (its per-epoch values
were reported as intermediate values along the way, so TPE ranks it by how far it got and how
well, after the complete ones); a trial that ran to its end, early-stopped on patience or
diverged (the trial says so in its result's `ended`) is COMPLETE with its best value; an errored
trial is FAIL. Each Optuna trial carries its Ray trial id as the user attribute `ray_trial_id`.

A module-level class: Ray pickles the searcher with the experiment and restores it by name.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from ray.tune.search.optuna import OptunaSearch

from tune.trials import ended_how

log = logging.getLogger(__name__)
STEP = "training_iteration"  # the step Ray's OptunaSearch reports intermediate values at (= the epoch here)


class HonestOptunaSearch(OptunaSearch):
    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        params = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None:
            ot_trial.set_user_attr("ray_trial_id", trial_id)  # links optuna.db to the leaderboard
        return params

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or trial_id in self._completed_trials or isinstance(self.metric, list):
            super().on_trial_complete(trial_id, result, error)
            return
        how = ended_how(result, "ERROR" if error else "TERMINATED")
        # Ray hands a trial's last result (ASHA's stopping one, or the final epoch) only to this method,
        # never to on_trial_result: record it as an intermediate value too, so every epoch is there.
        if result and isinstance(result.get(self.metric), (int, float)) and STEP in result:
            try:
                with warnings.catch_warnings():  # a step already there (reported before a restore) is kept
                    warnings.simplefilter("ignore", UserWarning)
                    ot_trial.report(float(result[self.metric]), int(result[STEP]))
            except Exception as e:  # noqa: BLE001 - e.g. a NaN of a diverged first epoch
                log.debug("intermediate value of %s not recorded: %s", trial_id, e)
        if how in ("completed", "early_stopped", "diverged"):
            super().on_trial_complete(trial_id, result, error=False)  # COMPLETE with its best value
            return
        from optuna.trial import TrialState

        state = TrialState.FAIL if how == "errored" else TrialState.PRUNED
        try:
            self._ot_study.tell(ot_trial, state=state)  # PRUNED keeps its last intermediate value
        except Exception as e:  # noqa: BLE001 - as Ray's own: a bookkeeping problem must not stop the search
            log.warning("could not tell Optuna that trial %s ended %s: %s", trial_id, how, e)
        self._completed_trials.add(trial_id)
