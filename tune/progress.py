"""Progress on screen during a search: one line per finished trial and a status line now and then."""

from __future__ import annotations

import time
from typing import Any

from ray.tune import Callback

from tune.metrics import better
from tune.trials import ended_how


class Progress(Callback):
    def __init__(self, arch: str, metric: str, mode: str, total: int, every_s: float = 15.0) -> None:
        self.arch, self.metric, self.mode, self.total, self.every_s = arch, metric, mode, total, every_s
        self.ended: dict[str, str] = {}
        self.best: tuple[float, str] | None = None
        self.last_print = 0.0
        self.t0 = time.time()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        v = result.get(self.metric)
        if v is not None and better(v, self.best[0] if self.best else float("nan"), self.mode):
            self.best = (v, trial.trial_id)
        if time.time() - self.last_print > self.every_s:
            self.status(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._done(trials, trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._done(trials, trial)

    def _done(self, trials: list, trial: Any) -> None:
        how = ended_how(trial.last_result, "ERROR" if trial.status == "ERROR" else "TERMINATED")
        self.ended[trial.trial_id] = how
        last = trial.last_result or {}
        v = last.get(self.metric, float("nan"))
        print(f"[{self.arch}] trial {trial.trial_id} {how} after {last.get('epoch', 0)} epoch(s): "
              f"{self.metric} {v:.4f}", flush=True)
        self.status(trials)

    def status(self, trials: list) -> None:
        self.last_print = time.time()
        running = sum(1 for t in trials if t.status == "RUNNING")
        counts: dict[str, int] = {}
        for how in self.ended.values():
            counts[how] = counts.get(how, 0) + 1
        detail = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        best = f"best {self.metric} {self.best[0]:.4f} (trial {self.best[1]})" if self.best else "no result yet"
        print(f"[{self.arch}] {time.time() - self.t0:5.0f}s  {len(self.ended)}/{self.total} done"
              f"{' (' + detail + ')' if detail else ''}, {running} running; {best}", flush=True)

    def summary(self) -> None:
        print(f"[{self.arch}] finished in {time.time() - self.t0:.0f}s", flush=True)
