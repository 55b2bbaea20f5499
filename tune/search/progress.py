"""Progress on screen during a search (one line per finished trial, a status line now and then), and
the label of a trial the scheduler stopped.

Ray calls user callbacks before its own loggers and lets them change a result in place, so when the
scheduler stops a trial (ASHA, or the time budget), `on_trial_result` writes the reason into that
last result's `ended` before it reaches result.json: how a trial ended is then in the trial's own
record, for the leaderboard and for Optuna alike (tune.runs.trials.ended_how).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from tune.metrics.classification import better
from tune.runs.trials import SCORE, ended_how
from tune.search.scheduler import ArchScheduler
from tune.training.store import budget_bytes, gb, used_bytes


class Progress(Callback):
    def __init__(self, scheduler: ArchScheduler, mode: str, *, every_s: float = 15.0,
                 cache: Path | None = None) -> None:
        self.scheduler, self.mode, self.every_s, self.cache = scheduler, mode, every_s, cache
        self.budget = scheduler.budget
        self.ended: dict[str, tuple[str, str]] = {}  # trial id -> (arch, how it ended)
        self.best: dict[str, tuple[float, str]] = {}  # arch -> (score, trial id)
        self.last_print = 0.0
        self.t0 = time.time()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if result.get("done") and not result.get("ended"):  # stopped by the scheduler at this epoch
            result["ended"] = self.scheduler.why_stopped(trial.trial_id)
        arch, v = trial.config.get("arch", "?"), result.get(SCORE)
        if v is not None and better(v, self.best[arch][0] if arch in self.best else float("nan"), self.mode):
            self.best[arch] = (v, trial.trial_id)
        if time.time() - self.last_print > self.every_s:
            self.status(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._done(trials, trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._done(trials, trial)

    def _done(self, trials: list, trial: Any) -> None:
        how = ended_how(trial.last_result, "ERROR" if trial.status == "ERROR" else "TERMINATED")
        arch = trial.config.get("arch", "?")
        self.ended[trial.trial_id] = (arch, how)
        last = trial.last_result or {}
        epochs = last.get("epoch", last.get("epochs_done", 0))  # a report that is no epoch (CUT_SHORT) counts them
        print(f"[{arch}] trial {trial.trial_id} {how} after {epochs} epoch(s): "
              f"score {last.get(SCORE, float('nan')):.4f}", flush=True)
        self.status(trials)

    def status(self, trials: list) -> None:
        """One line: elapsed (and left of a time budget), then per architecture its trials and best so far."""
        self.last_print = time.time()
        parts = []
        for arch in self.budget.archs:
            done = [how for a, how in self.ended.values() if a == arch]
            counts: dict[str, int] = {}
            for how in done:
                counts[how] = counts.get(how, 0) + 1
            running = sum(1 for t in trials if t.status == "RUNNING" and t.config.get("arch") == arch)
            total = f"/{self.budget.trials}" if self.budget.trials else ""
            detail = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
            best = f"best {self.best[arch][0]:.4f}" if arch in self.best else "no score yet"
            parts.append(f"{arch} {len(done)}{total} done{' (' + detail + ')' if detail else ''}, {running} running, "
                         f"{best}")
        clock = f" ({max(0.0, self.budget.deadline - time.time()):.0f}s left)" if self.budget.seconds else ""
        print(f"[search] {time.time() - self.t0:5.0f}s{clock}  " + " | ".join(parts) + self.cache_use(), flush=True)

    def cache_use(self) -> str:
        """This node's feature cache against its budget (other nodes keep their own)."""
        if self.cache is None:
            return ""

        return f" | cache {gb(used_bytes(self.cache))} of {gb(budget_bytes(self.cache))}"

    def summary(self) -> None:
        print(f"[search] finished in {time.time() - self.t0:.0f}s", flush=True)
