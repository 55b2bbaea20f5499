"""The result files, typed: comparison.json and evaluation.json (run.json is tune.runs.layout.RunRecord,
beside the run folder it describes; a model's record is tune.training.records.ModelRecord, beside what a
training writes).

Each is a dataclass written and read here only (`save`, `load`), so a field has one name and one meaning
and a reader never guesses which version wrote a file: `load` accepts what earlier versions wrote (missing
fields get the meaning they had then) and `save` writes this version's, with the keys every earlier reader
knows. Their parts are typed in tune.runs.comparison and tune.runs.evaluation; a part that another module owns
is that owner's type (a cell: tune.metrics.cells.Cell, which reads every schema of those; a condition:
tune.data.perturb.Condition; a row's config: tune.training.config.TrainConfig, read by its from_written).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tune.core import atomic_write_json, known, read_json
from tune.data.perturb import Condition
from tune.metrics.classification import ThresholdRule
from tune.runs.comparison import Costs, Ensembles, ModelRow, Picked, Resampling, Tradeoff, Verdict, Videos
from tune.runs.evaluation import EvaluatedModel, EvaluatedSource, EvaluationRow, PairedRow

EVALUATION = "evaluation.json"  # in evaluate's output folder, and in RUN/extra-test/ (comparison.json: Run)


# --------------------------------------------------------------------------- comparison.json, evaluation.json
@dataclass
class Comparison:
    """finalize's comparison.json: every model's row of cells, the verdict, the ensembles, the in-domain vs
    held-out trade-off, the picked model against the most accurate and, with finalize --extra-test, evaluate's
    tables of the winners."""

    run: str
    metric: str
    n_test: int
    test_fingerprint: str
    rows: list[ModelRow]
    best: dict[str, Verdict]  # by each headline metric (tune.metrics.classification.HEADLINE)
    threshold_rules: dict[ThresholdRule, str]  # each rule's description, as the file's writer worded it
    alpha: float = 0.05
    bootstrap: Resampling = field(default_factory=Resampling)
    skipped: dict[str, str] = field(default_factory=dict)
    ensembles: Ensembles | None = None
    tradeoff: Tradeoff | None = None
    evaluation: Evaluation | None = None
    picked: Picked | None = None  # finalize --pick: the shipped model against the most accurate
    costs: Costs | None = None  # each row's costs and how they were measured (tune.evaluation.costs)
    video: Videos | None = None  # a test split with videos: its cells per video (video_comparison.py)

    @classmethod
    def load(cls, path: Path) -> Comparison:
        return cls.from_dict(read_json(path))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Comparison:
        """This version's fields, or an earlier version's (no ensembles, trade-off or evaluation: None)."""
        def part(key: str, read: Callable[[dict[str, Any]], Any]) -> Any:
            return read(d[key]) if d.get(key) else None

        rules = {r.value for r in ThresholdRule}  # a rule this version does not know has no cells to show
        return known(cls, {**d, "rows": [ModelRow.from_dict(r) for r in d.get("rows", [])],
                           "threshold_rules": {ThresholdRule(k): v for k, v in d.get("threshold_rules", {}).items()
                                               if k in rules},
                           "best": {m: Verdict.from_dict(e) for m, e in d.get("best", {}).items()},
                           "bootstrap": Resampling.from_dict(d.get("bootstrap") or {}),
                           "ensembles": part("ensembles", Ensembles.from_dict),
                           "tradeoff": part("tradeoff", Tradeoff.from_dict),
                           "evaluation": part("evaluation", Evaluation.from_dict),
                           "picked": part("picked", Picked.from_dict), "costs": part("costs", Costs.from_dict),
                           "video": part("video", Videos.from_dict)})

    def save(self, path: Path) -> None:
        atomic_write_json(path, self.to_plain())

    def to_plain(self) -> dict[str, Any]:
        parts = {"rows": [r.to_plain() for r in self.rows], "best": {m: v.to_plain() for m, v in self.best.items()},
                 "threshold_rules": {str(k): v for k, v in self.threshold_rules.items()},
                 "bootstrap": self.bootstrap.to_plain("stratified_by_class")}
        for name in ("ensembles", "tradeoff", "evaluation", "picked", "costs", "video"):
            value = getattr(self, name)
            parts[name] = None if value is None else value.to_plain()
        return {k: v for k, v in {**vars(self), **parts}.items() if v is not None}

    @property
    def seeds(self) -> int:
        """Seeds per model (every model of a finalize has the same number)."""
        return len(self.rows[0].seeds) if self.rows else 0

    @property
    def tuned(self) -> list[ModelRow]:
        return [r for r in self.rows if r.kind == "tuned"]

    def row(self, name: str) -> ModelRow:
        return next(r for r in self.rows if r.name == name)


@dataclass
class Evaluation:
    """evaluate's evaluation.json: the models, sources and conditions, one row of cells per (model, source,
    condition) and the mean over sources, the paired tests, and the plots written beside it."""

    models: list[EvaluatedModel]
    sources: list[EvaluatedSource]
    conditions: list[Condition]
    rows: list[EvaluationRow]
    paired: list[PairedRow] = field(default_factory=list)
    plots: dict[str, str] = field(default_factory=dict)  # plot name -> its file, relative to this file's folder
    bootstrap: Resampling = field(default_factory=Resampling)
    threshold_rules: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, str] = field(default_factory=dict)
    created: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    frames: Evaluation | None = None  # sources with videos: the same evaluation of their frames, one row each

    @classmethod
    def load(cls, path: Path) -> Evaluation:
        return cls.from_dict(read_json(path))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Evaluation:
        """This version's fields or an earlier one's (comparison.json embeds one under "evaluation")."""
        frames = d.get("frames")
        return known(cls, {**d, "models": [EvaluatedModel.from_dict(m) for m in d.get("models", [])],
                           "sources": [EvaluatedSource.from_dict(s) for s in d.get("sources", [])],
                           "conditions": [Condition.from_dict(c) for c in d.get("conditions", [])],
                           "rows": [EvaluationRow.from_dict(r) for r in d.get("rows", [])],
                           "paired": [PairedRow.from_dict(p) for p in d.get("paired", [])],
                           "bootstrap": Resampling.from_dict(d.get("bootstrap") or {}),
                           "frames": cls.from_dict(frames) if frames else None})

    def save(self, path: Path) -> None:
        atomic_write_json(path, self.to_plain())

    def to_plain(self) -> dict[str, Any]:
        out = {"models": [m.to_plain() for m in self.models], "sources": [s.to_plain() for s in self.sources],
               "conditions": [c.to_dict() for c in self.conditions], "rows": [r.to_plain() for r in self.rows],
               "paired": [p.to_plain() for p in self.paired], "bootstrap": self.bootstrap.to_plain("stratified"),
               "frames": self.frames.to_plain() if self.frames is not None else None}
        return {k: v for k, v in {**vars(self), **out}.items() if v is not None}

    def by_source(self, model: str, condition: str) -> dict[str, EvaluationRow]:
        """A model's rows under one condition, by source (MEAN: the mean over sources)."""
        return {r.source: r for r in self.rows if r.model == model and r.condition == condition}
