"""A wall-clock deadline that training checks between batches: a search's time budget, kept whatever an epoch costs.

A search's trial learns its budget's deadline (tune/search/budget.py) and trains inside `until(deadline)`
(tune/search/trainable.py). Every training step, every scored batch and every chunk of a feature cache being built calls
`check()`, which raises `OutOfTime` once the deadline has passed; `fit` (tune/training/loop.py) then drops the
unfinished epoch, keeps its best completed one, and ends with `OUT_OF_TIME`. Checked only at those points, so an
epoch's row and the kept weights are never of a half-done epoch.

Wall time (time.time), not a monotonic clock: the deadline is the search driver's, and a trial on another node of a
cluster compares it with its own clock, which a cluster's nodes keep close enough for a budget of minutes. One
deadline per process, like the driver's clock: a trial process trains one trial at a time, and the cache code it
reaches (tune/training/cache.py) is shared by commands that have no deadline, which then pay nothing but a compare.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

OUT_OF_TIME = "time_budget"  # how a trial ended that the time budget stopped (`ended`, tune.runs.trials.ended_how)
_DEADLINE = [math.inf]  # the deadline the training running in this process keeps (inf: none)
T = TypeVar("T")


class OutOfTime(Exception):
    """The deadline passed: raised between batches, caught by `fit`."""


@contextmanager
def until(deadline: float | None) -> Iterator[None]:
    """Within the block, `check()` raises OutOfTime once time.time() reaches `deadline` (None: never)."""
    before = _DEADLINE[0]
    _DEADLINE[0] = math.inf if deadline is None else deadline
    try:
        yield
    finally:
        _DEADLINE[0] = before


def check() -> None:
    if time.time() >= _DEADLINE[0]:
        raise OutOfTime


def checked(items: Iterable[T]) -> Iterator[T]:
    """The items (batches), the deadline checked before each is used."""
    for item in items:
        check()
        yield item
