"""A search trial whose epochs from the second on are slow: a fixed delay in every training step, for tests only.

A test puts `slow_trial` in the place of tune.search.driver.run_trial (`install`, in the test's process); Ray pickles it
by value (its workers cannot import tests/), and in the trial's worker it slows that process's training loop for the
length of the trial. A sleep, not work: deterministic whatever the machine, and it leaves the cores to the other trial.
"""

from __future__ import annotations

import time
from typing import Any

DELAY_S = 2.0  # per training step of a slow epoch: how late past the deadline a trial can notice it
SLOW_FROM = 2  # the first slow epoch: the first one is quick, so a trial has a completed epoch to keep


def slow_trial(config: dict[str, Any], data: Any) -> None:
    from tune.search import trainable
    from tune.training import cache, loop

    one_epoch, on_device = loop.train_one_epoch, cache.Inputs.on_device
    slow = [False]

    def epoch(*args: Any, **kw: Any) -> float:  # train_one_epoch(model, inputs, y, optimizer, cfg, epoch, ...)
        slow[0] = args[5] >= SLOW_FROM
        try:
            return one_epoch(*args, **kw)
        finally:
            slow[0] = False

    def step(self: Any, b: Any) -> Any:  # inside a training step, after the loop's check of the deadline
        if slow[0]:
            time.sleep(DELAY_S)
        return on_device(self, b)

    loop.train_one_epoch, cache.Inputs.on_device = epoch, step
    try:
        trainable.run_trial(config, data)
    finally:
        loop.train_one_epoch, cache.Inputs.on_device = one_epoch, on_device


def install(monkeypatch: Any) -> None:
    """Every trial of a search this test starts in its own process is a slow_trial."""
    import sys

    from ray import cloudpickle

    from tune.search import driver

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    monkeypatch.setattr(driver, "run_trial", slow_trial)
