"""The result files, typed: comparison.json and evaluation.json (run.json is tune.runs.layout.RunRecord,
beside the run folder it describes; a model's record is tune.training.records.ModelRecord, beside what a
training writes).

Each is a dataclass written and read here only (`save`, `load`), so a field has one name and one meaning
and a reader never guesses which version wrote a file: `load` accepts what earlier versions wrote (missing
fields get the meaning they had then) and `save` writes this version's. The nested parts that other modules
own stay dicts in their owners' schemas: the search space (tune.search.space), the trials' configs
(tune.training.config), the cells (tune.metrics.cells.Cell.from_dict reads every schema of those).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tune.core import atomic_write_json, known, plain, read_json

EVALUATION = "evaluation.json"  # in evaluate's output folder, and in RUN/extra-test/ (comparison.json: Run)


# --------------------------------------------------------------------------- comparison.json, evaluation.json
@dataclass
class Comparison:
    """finalize's comparison.json: every model's rows of cells (tune.metrics.cells), the verdict, the ensembles,
    the in-domain vs held-out trade-off, the picked model against the most accurate and, with finalize
    --extra-test, evaluate's tables of the winners."""

    run: str
    metric: str
    n_test: int
    test_fingerprint: str
    rows: list[dict[str, Any]]
    best: dict[str, Any]
    threshold_rules: dict[str, str]
    alpha: float = 0.05
    bootstrap: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    ensembles: dict[str, Any] | None = None
    tradeoff: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    picked: dict[str, Any] | None = None  # finalize --pick: the shipped model against the most accurate
    costs: dict[str, Any] | None = None  # how each row's `costs` were measured (tune.evaluation.costs)
    video: dict[str, Any] | None = None  # a test split with videos: its cells per video (video_comparison.py)

    @classmethod
    def load(cls, path: Path) -> Comparison:
        return cls.from_dict(read_json(path))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Comparison:
        """This version's fields, or an earlier version's (no ensembles, trade-off or evaluation: None)."""
        return known(cls, d)

    def save(self, path: Path) -> None:
        atomic_write_json(path, self.to_plain())

    def to_plain(self) -> dict[str, Any]:
        return plain(self)

    @property
    def seeds(self) -> int:
        """Seeds per model (every model of a finalize has the same number)."""
        return len(self.rows[0]["seeds"]) if self.rows else 0

    @property
    def tuned(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["kind"] == "tuned"]


@dataclass
class Evaluation:
    """evaluate's evaluation.json: the models, sources and conditions, one row of cells per (model, source,
    condition) and the mean over sources, the paired tests, and the plots written beside it."""

    models: list[dict[str, Any]]
    sources: list[dict[str, Any]]
    conditions: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    paired: list[dict[str, Any]] = field(default_factory=list)
    plots: dict[str, str] = field(default_factory=dict)
    bootstrap: dict[str, Any] = field(default_factory=dict)
    threshold_rules: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, str] = field(default_factory=dict)
    created: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    frames: dict[str, Any] | None = None  # sources with videos: the same evaluation of their frames, one row each

    @classmethod
    def load(cls, path: Path) -> Evaluation:
        return cls.from_dict(read_json(path))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Evaluation:
        """This version's fields or an earlier one's (comparison.json embeds one under "evaluation")."""
        return known(cls, {"models": [], "sources": [], "conditions": [], "rows": [], **d})

    def save(self, path: Path) -> None:
        atomic_write_json(path, self.to_plain())

    def to_plain(self) -> dict[str, Any]:
        return plain(self)
