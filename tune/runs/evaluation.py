"""The parts of evaluate's evaluation.json, typed (tune.runs.files.Evaluation holds them): the models, the sources,
one row of cells per (model, source, condition) and the paired tests between models.

As with the comparison's parts (tune.runs.comparison), each is read (`from_dict`: this version's keys or an
earlier version's) and written (`to_plain`: this version's) here only; a condition is its owner's type,
tune.data.perturb.Condition, and a row's cells are tune.metrics.cells.Cell keyed by ThresholdRule.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tune.core import known
from tune.metrics.cells import Cell, PairedTest, cell_of
from tune.metrics.classification import AT_HALF, AT_VALID, METRICS, ThresholdRule
from tune.runs.comparison import Cells, cell, plain_cells

MEAN = "mean"  # the row of a model and condition that averages the sources (each weighs the same)


@dataclass
class EvaluatedModel:
    """One model file evaluate scored: where it is, what it is, the threshold it brought from its valid split."""

    name: str  # the tables' name of it (unique within the evaluation)
    arch: str = ""
    path: str = ""
    sha256: str | None = None  # None: an earlier file did not say
    threshold: float = 0.5
    threshold_rule: str = ""  # how its threshold was chosen, in words
    run: str | None = None
    trial: str | None = None
    image_size: int = 0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvaluatedModel:
        return known(cls, d)

    def to_plain(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EvaluatedSource:
    """One folder of images (a generator, a dataset) evaluate scored every model on."""

    name: str
    path: str = ""
    n_fake: int = 0
    n_real: int = 0
    fingerprint: str = ""  # its images' content hash: it seeds the source's bootstrap resamples
    skipped: list[str] = field(default_factory=list)  # unreadable images left out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvaluatedSource:
        return known(cls, d)

    def to_plain(self) -> dict[str, Any]:
        return asdict(self)


def _at(d: dict[str, Any], rule: ThresholdRule) -> dict[str, Any]:
    """A file row's cells at a rule. Files written before the one cell schema kept the ranking metrics at the row's
    top (the same under either rule) and named the valid threshold's rule `at_threshold`."""
    earlier = d.get("at_threshold" if rule == AT_VALID else rule) or {}
    top = {m: d[m] for m in METRICS if METRICS[m].ranking and isinstance(d.get(m), dict)}
    return {**top, **earlier, **(d.get(rule) or {})}


@dataclass
class EvaluationRow:
    """One model on one source (or MEAN: the mean over sources) under one condition: its cells at each rule."""

    model: str
    source: str
    condition: str  # the Condition's name
    n_fake: int
    n_real: int
    cells: Cells
    note: str = ""  # why a cell is undefined, images skipped, what the mean row averages

    def cell(self, metric: str, rule: ThresholdRule = AT_HALF) -> Cell:
        return cell(self.cells, metric, rule)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvaluationRow:
        cells = {rule: {m: cell_of(c) for m, c in got.items()} for rule in ThresholdRule if (got := _at(d, rule))}
        return cls(d.get("model", ""), d.get("source", ""), d.get("condition", ""), int(d.get("n_fake", 0)),
                   int(d.get("n_real", 0)), cells, d.get("note", ""))

    def to_plain(self) -> dict[str, Any]:
        return {"model": self.model, "source": self.source, "condition": self.condition, "n_fake": self.n_fake,
                "n_real": self.n_real, **plain_cells(self.cells), "note": self.note}


@dataclass
class PairedRow:
    """Model A against model B on one source (or "overall": the mean over sources), one metric at 0.5."""

    source: str
    condition: str
    a: str
    b: str
    metric: str
    test: PairedTest

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PairedRow:
        test = PairedTest.from_dict(d)
        if test is None:
            raise ValueError(f"a paired row without its test: {d}")
        return cls(d["source"], d["condition"], d["a"], d["b"], d["metric"], test)

    def to_plain(self) -> dict[str, Any]:
        return {"source": self.source, "condition": self.condition, "a": self.a, "b": self.b, "metric": self.metric,
                **self.test.to_dict()}
