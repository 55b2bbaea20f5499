"""Accuracy against cost on the leaderboard: which trials are on the Pareto front, and which trial a
`finalize --pick` rule names.

The front's objectives are the space's (`objectives:`), or for a single-objective run its metric and
latency_ms (when the trials measured it). Only finished trials count (completed or early-stopped): a trial ASHA
stopped was never trained to its end. A trial is on the front when no other finished trial is at least as good
in every objective and better in one.

Pick rules (parsed when the command line is, so a typo is one line before any work):
- `best`: each architecture's best trial, as finalize always did (nothing more is retrained);
- `NAME<=X` (or <, >=, >): the best-scoring trial whose NAME (a cost such as latency_ms, or a leaderboard
  column) meets the bound;
- `within:D`: the fastest (lowest latency_ms) trial whose score is within D of the best score.
A rule no trial meets is one line naming the closest trial.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from tune.core import UserError
from tune.metrics.cells import as_finite

FINISHED = ("completed", "early_stopped")
SPEED = "latency_ms"
OPS: dict[str, Callable[[float, float], bool]] = {"<=": operator.le, "<": operator.lt, ">=": operator.ge,
                                                  ">": operator.gt}


def goals(space: dict[str, Any], columns: Any) -> list[tuple[str, str]]:
    """(leaderboard column, mode) of each objective of the front; [] when there is no second one."""
    objectives = [tuple(o) for o in space.get("objectives") or ()]
    if not objectives:
        objectives = [(space["metric"], space["mode"]), (SPEED, "min")]
    out = [("score" if i == 0 else name, mode) for i, (name, mode) in enumerate(objectives)]
    return out if len(out) > 1 and all(c in columns for c, _ in out) else []


def front_mask(df: pd.DataFrame, objectives: list[tuple[str, str]]) -> list[bool]:
    """True for each row on the Pareto front of the finished trials in `objectives` ((column, mode), ...)."""
    if not objectives or df.empty:
        return [False] * len(df)
    # every objective as "lower is better"
    points: list[tuple[float, ...] | None] = []
    for _, row in df.iterrows():
        vals = [as_finite(row.get(c)) for c, _ in objectives]
        ok = row.get("ended") in FINISHED and all(v is not None for v in vals)
        points.append(tuple(-v if m == "max" else v for v, (_, m) in zip(vals, objectives)) if ok else None)

    def dominated(p: tuple[float, ...]) -> bool:
        return any(q is not None and q != p and all(a <= b for a, b in zip(q, p)) for q in points)

    return [p is not None and not dominated(p) for p in points]


@dataclass(frozen=True)
class PickRule:
    text: str
    kind: str  # "best", "bound" or "within"
    name: str = ""  # bound: the column bounded
    op: str = ""
    value: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.text, "kind": self.kind, **({"name": self.name, "op": self.op} if self.name else {}),
                **({"value": self.value} if self.kind != "best" else {})}


def parse_pick(text: str) -> PickRule:
    """best, NAME<=X (<, >=, >) or within:D; anything else raises ValueError (argparse prints one line)."""
    t = text.strip().replace(" ", "")
    if t == "best":
        return PickRule("best", "best")
    if t.startswith("within:"):
        try:
            d = float(t.split(":", 1)[1])
        except ValueError:
            d = math.nan
        if not d >= 0:
            raise ValueError(f"{text!r}: within:D needs a number D >= 0, e.g. within:0.01")
        return PickRule(t, "within", value=d)
    m = re.fullmatch(r"([A-Za-z_][\w\[\]]*)(<=|>=|<|>)([-+0-9.eE]+)", t)
    if m:
        try:
            return PickRule(t, "bound", m.group(1), m.group(2), float(m.group(3)))
        except ValueError:
            pass
    raise ValueError(f"{text!r}: expected best, NAME<=X (e.g. latency_ms<=8) or within:D (e.g. within:0.01)")


def _describe(row: pd.Series, *cols: str) -> str:
    vals = ", ".join(f"{c} {row[c]:.4g}" for c in cols if as_finite(row.get(c)) is not None)
    return f"{row['arch']} trial {row['trial_no']} ({row['trial_id']}; {vals})"


def choose(df: pd.DataFrame, rule: PickRule, mode: str) -> pd.Series | None:
    """The leaderboard row the rule names (None for `best`: each architecture's winner); one UserError otherwise."""
    if rule.kind == "best":
        return None
    scored = df[df["score"].map(lambda v: as_finite(v) is not None)]
    if scored.empty:
        raise UserError(f"--pick {rule.text}: no trial has a score yet")
    need = rule.name if rule.kind == "bound" else SPEED
    if need not in scored.columns or scored[need].map(lambda v: as_finite(v) is None).all():
        raise UserError(f"--pick {rule.text}: no trial has {need} (measured by searches since issue 29's serving "
                        "costs; search again, or pick best)")
    scored = scored[scored[need].map(lambda v: as_finite(v) is not None)]
    best_first = scored.sort_values("score", ascending=(mode == "min"), kind="stable")
    if rule.kind == "within":
        top = float(best_first.iloc[0]["score"])
        near = best_first[(best_first["score"] - top).abs() <= rule.value + 1e-12]
        return near.sort_values([SPEED, "score"], ascending=[True, mode == "min"], kind="stable").iloc[0]
    ok = best_first[best_first[need].map(lambda v: OPS[rule.op](float(v), rule.value))]
    if not ok.empty:
        return ok.iloc[0]
    closest = scored.loc[(scored[need].astype(float) - rule.value).abs().idxmin()]
    raise UserError(f"--pick {rule.text}: no trial meets it; the closest is {_describe(closest, need, 'score')}")
