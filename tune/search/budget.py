"""What a search may spend: trials per architecture, wall time, or both (whichever runs out first).

One Tuner runs every architecture (tune/search/driver.py). Its searcher (tune/search/searcher.py) hands each
free slot to an architecture that still has budget, and none once the deadline has passed. With a time
budget of B seconds on S slots, each of the n architectures has a share of S x B / n trial-seconds: the
next trial goes to the architecture with the fewest trials running (then the least trial time used), and
none starts a trial once its share is spent. The trials know the deadline (tune/search/trainable.py) and
stop between two batches once it has passed, keeping their best completed epoch (tune/training/deadline.py),
so the search ends within B plus one batch and the trials' wind-down, however long an epoch takes; a trial
that reports an epoch past it is stopped there by the scheduler (tune/search/scheduler.py).

The deadline is the driver's clock: the searcher and the scheduler are pickled into the experiment
and restored by `--resume`, but the time left is the driver's to say (the budget less what earlier
sessions spent), so they look it up here instead of carrying it, and the trials get it from the
trainable the driver makes for each session (wall time: a cluster's nodes share it closely enough).
A driver runs one experiment at a time, so there is one clock per process, set by `Budget.start`: a
pickle never names it, and a run folder moved or copied elsewhere (or reached through another spelling
of its path) keeps its deadline.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass

from tune.core import UserError

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_CLOCK: list[tuple[float, int]] = [(math.inf, 1)]  # (deadline, slots) of the experiment this process runs now


def parse_duration(text: str | float | int, what: str = "--time-budget") -> float:
    """"90s", "20m", "1.5h" or plain seconds → seconds (> 0)."""
    m = DURATION.match(str(text))
    seconds = float(m.group(1)) * UNITS[m.group(2) or "s"] if m else math.nan
    if not seconds > 0:
        raise UserError(f"bad {what} {str(text)!r}: expected a duration like 90s, 20m or 1.5h (or seconds)")
    return seconds


def format_duration(seconds: float) -> str:
    return f"{seconds / 3600:g}h" if seconds >= 3600 else f"{seconds / 60:g}m" if seconds >= 60 else f"{seconds:g}s"


@dataclass(frozen=True)
class Budget:
    """One experiment's budget: `trials` per architecture and/or `seconds` of wall time (None: no limit)."""

    archs: tuple[str, ...]
    trials: int | None = None
    seconds: float | None = None

    def start(self, *, slots: int, spent: float = 0.0) -> None:
        """Start (or, resuming, restart) the clock with `spent` seconds already used, on `slots` slots."""
        left = math.inf if self.seconds is None else max(0.0, self.seconds - spent)
        _CLOCK[0] = (time.time() + left, max(1, slots))

    @property
    def deadline(self) -> float:
        return _CLOCK[0][0]

    def expired(self) -> bool:
        return time.time() >= self.deadline

    def share_s(self) -> float:
        """Trial-seconds each architecture may use: slots x budget / architectures."""
        if self.seconds is None:
            return math.inf
        return _CLOCK[0][1] * self.seconds / len(self.archs)

    def summary(self, spent: float = 0.0) -> str:
        """"6 trials per architecture", "a time budget of 20m (18m per architecture on 2 slots)", or both."""
        parts = [f"{self.trials} trials per architecture"] if self.trials else []
        if self.seconds:
            left = f", {format_duration(spent)} of it spent" if spent else ""
            parts.append(f"a time budget of {format_duration(self.seconds)}{left} "
                         f"({format_duration(self.share_s())} of trial time per architecture)")
        return " and ".join(parts) or "no limit"

    def next_arch(self, usage: dict[str, Usage]) -> str | None:
        """The architecture the next trial goes to, or None when none may start one.

        With a trial count only: until every architecture with trials left has finished one, the one with the
        fewest trials so far (they interleave); then the one with the most expected trial time left (trials
        left x its mean trial length). That is the longest-work-first rule for keeping parallel slots busy:
        long trials start while there is still other work to fill the slots beside them, and the last
        trials to start are the short ones, so the search does not end with one long trial running alone.
        With a time budget: until every architecture has finished a trial, the one with the fewest running
        (each holds the same number of slots); then the one with the least trial time used and committed,
        its running trials counted at that architecture's mean trial length, so one with short trials (and
        more gaps between them) gets slots more often. None whose share is spent, or whose trial count is
        reached."""
        if self.expired():
            return None
        open_ = [a for a in self.archs if (self.trials is None or usage[a].handed < self.trials)
                 and usage[a].used_s < self.share_s()]
        if not open_:
            return None
        order = self.archs.index
        if self.seconds is None:
            trials = self.trials
            if trials is None or any(not usage[a].finished for a in open_):
                return min(open_, key=lambda a: (usage[a].handed, order(a)))
            return min(open_, key=lambda a: (-(trials - usage[a].handed) * usage[a].mean_s, usage[a].handed,
                                             order(a)))
        if any(not usage[a].finished for a in self.archs):
            return min(open_, key=lambda a: (usage[a].running, usage[a].used_s, order(a)))
        return min(open_, key=lambda a: (usage[a].used_s + usage[a].committed_s, order(a)))


@dataclass(frozen=True)
class Usage:
    """What one architecture has had so far (the searcher counts it from the trials' results)."""

    handed: int = 0  # trials started
    running: int = 0
    used_s: float = 0.0  # trial time reported
    committed_s: float = 0.0  # what its running trials will still take, at its mean trial length
    finished: int = 0
    mean_s: float = 0.0  # the mean length of its finished trials
