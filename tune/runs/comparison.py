"""The parts of finalize's comparison.json, typed (tune.runs.files.Comparison holds them): each model's row, the
verdict, the ensembles, the in-domain vs held-out trade-off, the pick, the costs, the per-video block and how the
bootstrap was drawn.

Each part is read (`from_dict`: this version's keys or an earlier version's) and written (`to_plain`: this
version's keys, the ones every earlier reader knows) here only, so the modules that compute or render them use
attributes, never a file's string keys. The nested parts other modules own are those owners' types: a cell is
tune.metrics.cells.Cell (which reads every cell schema), a paired test tune.metrics.cells.PairedTest, the costs'
settings tune.metrics.costs.LatencySettings, a row's config tune.training.config.TrainConfig; a row's cells are keyed
by tune.metrics.classification.ThresholdRule.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from tune.core import UserError, known
from tune.metrics.cells import Cell, PairedTest, cell_of
from tune.metrics.classification import AT_HALF, ThresholdRule
from tune.metrics.costs import LatencySettings
from tune.training.config import TrainConfig

Cells = dict[ThresholdRule, dict[str, Cell]]  # under each threshold rule, each metric's cell


def read_cells(d: dict[str, Any]) -> Cells:
    """The cells a file's row holds under its threshold-rule keys (any cell schema)."""
    return {rule: {m: cell_of(c) for m, c in d[rule].items()} for rule in ThresholdRule if d.get(rule)}


def plain_cells(cells: Cells) -> dict[str, dict[str, dict[str, Any]]]:
    return {str(rule): {m: c.to_dict() for m, c in got.items()} for rule, got in cells.items()}


def cell(cells: Cells, metric: str, rule: ThresholdRule = AT_HALF) -> Cell:
    """One cell; an absent one (a metric added after the file was written) is undefined."""
    return cells.get(rule, {}).get(metric) or Cell(None)


def _test(test: PairedTest | None) -> dict[str, float | bool]:
    return test.to_dict() if test else {}


# --------------------------------------------------------------------------- rows
def read_config(d: dict[str, Any] | None, seed: int) -> TrainConfig | None:
    """A row's config as any version wrote it (TrainConfig.from_written), with the row's chosen seed."""
    try:
        return None if d is None else TrainConfig.from_written({**d, "seed": seed})
    except (UserError, TypeError, ValueError):  # an architecture or a value this version does not know
        return None


@dataclass
class ModelRow:
    """One finalized model: what it is, its seeds with their valid scores and thresholds, and its test cells (mean
    over seeds ± t [bootstrap interval]) under each threshold rule (in the file: one key per rule)."""

    model: str  # the tables' label
    name: str  # its folder under finalize/ (the arch, "<arch>-baseline", "<arch>-picked")
    arch: str
    kind: str  # "tuned", "baseline" or "picked" (tune.evaluation.retrain.Candidate.kind)
    trial_id: str | None
    # The retrained config of the chosen seed (each seed's is this one with its own seed; the file writes the seed
    # null). None: a file whose config this version cannot read (an architecture or a value it does not know).
    config: TrainConfig | None
    seeds: list[int]
    valid_scores: list[float]
    thresholds: list[float]  # each seed's valid-chosen threshold
    folder: str  # relative to the run folder
    chosen_seed: int  # the exported seed: the best valid score
    chosen_threshold: float | None
    cells: Cells

    def cell(self, metric: str, rule: ThresholdRule = AT_HALF) -> Cell:
        return cell(self.cells, metric, rule)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelRow:
        return known(cls, {**d, "config": read_config(d.get("config"), d["chosen_seed"]), "cells": read_cells(d)})

    def to_plain(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "cells"}
        config = None if self.config is None else {**self.config.to_dict(), "seed": None}  # a row is all its seeds
        return {**out, "config": config, **plain_cells(self.cells)}


@dataclass
class Verdict:
    """The best tuned model by one headline metric at 0.5 and, with two or more, its lead over the runner-up."""

    model: str
    value: float | None
    runner_up: str | None = None
    runner_up_value: float | None = None
    test: PairedTest | None = None  # the best against the runner-up (None: one model, or a value undefined)
    tie: bool = False

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Verdict:
        return cls(d["model"], d.get("value"), d.get("runner_up"), d.get("runner_up_value"), PairedTest.from_dict(d),
                   bool(d.get("tie", False)))

    def to_plain(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "value": self.value}
        if self.runner_up is not None:
            out.update(runner_up=self.runner_up, runner_up_value=self.runner_up_value, **_test(self.test), tie=self.tie)
        return out


@dataclass
class Versus:
    """A predictor's value against a reference's (the chosen seed, the most accurate model), with the paired test.
    The file names the reference's value by what it is (`chosen_value`, `most_accurate_value`)."""

    value: float | None
    reference: float | None
    test: PairedTest | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any], reference: str) -> Versus:
        return cls(d.get("value"), d.get(reference), PairedTest.from_dict(d))

    def to_plain(self, reference: str) -> dict[str, Any]:
        return {"value": self.value, reference: self.reference, **_test(self.test)}


# --------------------------------------------------------------------------- finalize --pick
MOST_ACCURATE = "most_accurate_value"


@dataclass
class Picked:
    """The shipped model (models/picked/) against the most accurate winner, per headline metric at 0.5."""

    model: str
    rule: str  # the --pick rule as written
    most_accurate: str
    same: bool
    metrics: dict[str, Versus] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Picked:
        return cls(d["model"], d["rule"], d["most_accurate"], bool(d["same"]),
                   {m: Versus.from_dict(e, MOST_ACCURATE) for m, e in (d.get("metrics") or {}).items()})

    def to_plain(self) -> dict[str, Any]:
        return {"model": self.model, "rule": self.rule, "most_accurate": self.most_accurate, "same": self.same,
                "metrics": {m: v.to_plain(MOST_ACCURATE) for m, v in self.metrics.items()}}


# --------------------------------------------------------------------------- ensembles and flip TTA
CHOSEN = "chosen_value"


@dataclass
class VariantRow:
    """One predictor of one model (tune.evaluation.ensembles.VARIANTS): its cells and, but for the chosen seed
    itself, its paired test against the chosen seed under each rule."""

    model: str
    name: str
    arch: str
    kind: str
    seeds: list[int]
    chosen_seed: int
    variant: str
    predictor: str  # how a table names it
    thresholds: list[float]  # at the valid threshold, one per row of the predictor
    cells: Cells
    vs_chosen: dict[ThresholdRule, dict[str, Versus]] | None = None

    def cell(self, metric: str, rule: ThresholdRule = AT_HALF) -> Cell:
        return cell(self.cells, metric, rule)

    def versus(self, metric: str, rule: ThresholdRule = AT_HALF) -> Versus | None:
        return (self.vs_chosen or {}).get(rule, {}).get(metric)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VariantRow:
        vs = d.get("vs_chosen")
        return known(cls, {**d, "cells": read_cells(d), "vs_chosen": None if vs is None else {
            ThresholdRule(rule): {m: Versus.from_dict(e, CHOSEN) for m, e in got.items()} for rule, got in vs.items()}})

    def to_plain(self) -> dict[str, Any]:
        out = asdict(self)
        del out["cells"], out["vs_chosen"]
        if self.vs_chosen is not None:
            out["vs_chosen"] = {str(rule): {m: v.to_plain(CHOSEN) for m, v in got.items()}
                                for rule, got in self.vs_chosen.items()}
        return {**out, **plain_cells(self.cells)}


@dataclass
class Ensembles:
    variants: dict[str, str]  # variant -> what it is
    paired_against: str  # the reference variant
    paired_metrics: list[str]
    rows: list[VariantRow]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Ensembles:
        return cls(d["variants"], d["paired_against"], list(d["paired_metrics"]),
                   [VariantRow.from_dict(r) for r in d["rows"]])

    def to_plain(self) -> dict[str, Any]:
        return {"variants": self.variants, "paired_against": self.paired_against,
                "paired_metrics": self.paired_metrics, "rows": [r.to_plain() for r in self.rows]}

    def row(self, name: str, variant: str) -> VariantRow | None:
        return next((r for r in self.rows if r.name == name and r.variant == variant), None)


# --------------------------------------------------------------------------- in-domain vs held-out validation
@dataclass
class TradeoffRow:
    """A model's validation AUCs (mean over its seeds) beside its test AUC."""

    name: str
    model: str
    kind: str
    test_auc: float | None
    validation: dict[str, float]  # val_auc, xval_auc, xval[SOURCE]_auc: in the file, keys of the row itself

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TradeoffRow:
        about = ("name", "model", "kind", "test_auc")
        return cls(d["name"], d["model"], d["kind"], d.get("test_auc"),
                   {k: v for k, v in d.items() if k not in about})

    def to_plain(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model, "kind": self.kind, **self.validation,
                "test_auc": self.test_auc}


@dataclass
class Tradeoff:
    """comparison.json's "tradeoff" (tune.evaluation.tradeoff computes it): the rows, which model each validation
    picks among the tuned ones and, when they differ, the paired bootstrap of the two on test."""

    rows: list[TradeoffRow]
    alpha: float
    in_domain_winner: str | None = None  # None: fewer than two tuned models with both AUCs
    held_out_winner: str | None = None
    agree: bool | None = None
    test_difference: float | None = None  # the in-domain winner's test AUC minus the held-out winner's
    p_value: float | None = None
    significant: bool | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Tradeoff:
        return known(cls, {**d, "rows": [TradeoffRow.from_dict(r) for r in d.get("rows", [])]})

    def to_plain(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if v is not None}
        return {**out, "rows": [r.to_plain() for r in self.rows]}


# --------------------------------------------------------------------------- costs, videos, the bootstrap
@dataclass
class Costs:
    """How each model's costs were measured (tune.evaluation.costs) and the numbers, by row name."""

    settings: LatencySettings
    device: str
    labels: dict[str, str]  # cost name (tune.metrics.costs.COSTS) -> its label, in the tables' order
    models: dict[str, dict[str, float | None]]  # row name -> cost name -> value (None: unknown, e.g. no ONNX)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Costs:
        return cls(known(LatencySettings, d.get("settings") or {}), d.get("device", "cpu"), d.get("labels") or {},
                   d.get("models") or {})

    def to_plain(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class VideoRow:
    model: str
    name: str
    kind: str
    aggregation: str  # how its frames' P(fake) make a video's
    cells: Cells

    def cell(self, metric: str, rule: ThresholdRule = AT_HALF) -> Cell:
        return cell(self.cells, metric, rule)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VideoRow:
        return cls(d["model"], d["name"], d["kind"], d.get("aggregation", ""), read_cells(d))

    def to_plain(self) -> dict[str, Any]:
        return {"model": self.model, "name": self.name, "kind": self.kind, "aggregation": self.aggregation,
                **plain_cells(self.cells)}


@dataclass
class Videos:
    """A test split with videos: each model's cells per test video (tune.evaluation.video_comparison)."""

    n_videos: int
    n_frames: int
    about: str
    rows: list[VideoRow]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Videos:
        return cls(d["n_videos"], d["n_frames"], d.get("about", ""), [VideoRow.from_dict(r) for r in d["rows"]])

    def to_plain(self) -> dict[str, Any]:
        return {"n_videos": self.n_videos, "n_frames": self.n_frames, "about": self.about,
                "rows": [r.to_plain() for r in self.rows]}


@dataclass
class Resampling:
    """How a file's bootstrap intervals were drawn (tune.metrics.bootstrap): comparison.json's and
    evaluation.json's `bootstrap`."""

    resamples: int = 1000
    seed: list[int | str] | int = 0  # the fixed seed and what else seeds each generator
    stratified: bool = True  # by class; comparison.json calls it `stratified_by_class`
    level: float | None = None  # of the intervals (evaluation.json says it; finalize's are 95%)
    statistic: str | None = None  # what each resample's value is (comparison.json: a mean over seeds)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Resampling:
        """Either file's keys; earlier versions named the fixed seed `numpy_seed`."""
        return known(cls, {"seed": d.get("numpy_seed", 0), "stratified": d.get("stratified_by_class", True), **d})

    @property
    def confidence(self) -> float:
        """The intervals' level: 95% where the file does not say (finalize's always are)."""
        return self.level if self.level is not None else 0.95

    def to_plain(self, stratified: str = "stratified") -> dict[str, Any]:
        """`stratified`: the key the file names it by."""
        out = {k: v for k, v in asdict(self).items() if v is not None}
        return {stratified if k == "stratified" else k: v for k, v in out.items()}
