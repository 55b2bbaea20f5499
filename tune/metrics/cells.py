"""The one cell of every test-results table: a value, its bootstrap interval over the images, and (for a model
retrained with several seeds) its t-interval over the seeds.

Finalize's comparison, evaluate's tables, the model card and the report hold and print cells this way:
`0.982 ± 0.017 [0.965, 0.995]` is the mean over seeds ± the half-width of its 95% t-interval over seeds
[95% bootstrap interval over the images]; one model prints `0.982 [0.965, 0.995]`; an undefined value (AUC
on one class) prints `n/a`. Files written before the one cell (comparison.json's mean / t_half / boot_low /
boot_high, evaluation.json's value / low / high) are read into the same cell.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


def as_finite(v: Any) -> float | None:
    """A finite float, or None (JSON null, NaN, a missing field)."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


@dataclass(frozen=True)
class Cell:
    value: float | None  # the metric on all images; for several seeds, the mean of each seed's value
    low: float | None = None  # the bootstrap interval over the images
    high: float | None = None
    t_half: float | None = None  # half-width of the 95% t-interval over seeds (None: one model, or one seed)
    per_seed: tuple[float, ...] = ()

    def text(self, digits: int = 3) -> str:
        if self.value is None:
            return "n/a"
        out = f"{self.value:.{digits}f}"
        if self.t_half is not None:
            out += f" ± {self.t_half:.{digits}f}"
        return out + (f" [{self.low:.{digits}f}, {self.high:.{digits}f}]" if self.low is not None else "")

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "low": self.low, "high": self.high, "t_half": self.t_half,
                "per_seed": list(self.per_seed)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Cell:
        """This schema, or an earlier one (finalize's mean/t_half/boot_low/boot_high, evaluate's value/low/high)."""
        value = d["value"] if "value" in d else d.get("mean")
        return cls(as_finite(value), as_finite(d.get("low", d.get("boot_low"))),
                   as_finite(d.get("high", d.get("boot_high"))), as_finite(d.get("t_half")),
                   tuple(float(v) for v in d.get("per_seed") or ()))

    @property
    def defined(self) -> bool:
        return self.value is not None


def cell_of(d: dict[str, Any] | None) -> Cell:
    """A cell from a file's dict (any of its schemas); an absent cell is undefined."""
    return Cell.from_dict(d) if d else Cell(None)


@dataclass(frozen=True)
class PairedTest:
    """A's value minus B's, with the two-sided paired bootstrap p on the same resamples (tune.metrics.bootstrap.paired)
    and whether it is significant. In the files its three keys sit beside the two values they compare."""

    difference: float
    p_value: float
    significant: bool

    def to_dict(self) -> dict[str, float | bool]:
        return {"difference": self.difference, "p_value": self.p_value, "significant": self.significant}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PairedTest | None:
        """The test among a file entry's keys; None where the entry has none (one model, an undefined value)."""
        if d.get("p_value") is None:
            return None
        return cls(float(d["difference"]), float(d["p_value"]), bool(d["significant"]))
