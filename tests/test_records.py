"""The records between stages are typed: the run files' dataclasses hold dataclasses, not dicts of strings; the
threshold rules and the hyperparameter kinds are each declared once and named through that declaration."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

import tune
from tune.metrics.cells import Cell, PairedTest
from tune.metrics.classification import AT_HALF, AT_VALID, THRESHOLD_RULES, ThresholdRule
from tune.runs import comparison, evaluation, files

SRC = Path(tune.__file__).parent
RECORD_MODULES = (files, comparison, evaluation)
UNTYPED = re.compile(r"\bdict\[str, Any\]")
# Fields that stay in their owner's schema, with why. Anything else typed `dict[str, Any]` fails the test below.
KEPT_AS_WRITTEN = {
    "ModelRow.config": "the retrained TrainConfig in tune.training.config's schema (seed None), kept as finalize "
                       "wrote it: TrainConfig.from_dict reads it, and a later option must not appear in an old row",
}


def record_classes() -> dict[str, type]:
    return {f"{c.__name__}": c for m in RECORD_MODULES for c in vars(m).values()
            if dataclasses.is_dataclass(c) and isinstance(c, type) and c.__module__ == m.__name__}


def test_no_record_field_is_an_untyped_dict() -> None:
    """Every field of the run files' records (tune/runs/files.py, comparison.py, evaluation.py) is a type with named
    fields, not `dict[str, Any]` / `list[dict[str, Any]]`, but for the exceptions listed with their reason."""
    classes = record_classes()
    assert {"Comparison", "Evaluation", "ModelRow", "Verdict", "Ensembles", "Tradeoff", "Picked",
            "EvaluationRow"} <= set(classes)
    untyped = {f"{name}.{f.name}": str(f.type) for name, c in classes.items() for f in dataclasses.fields(c)
               if UNTYPED.search(str(f.type))}
    assert sorted(set(untyped) - set(KEPT_AS_WRITTEN)) == []
    assert sorted(set(KEPT_AS_WRITTEN) - set(untyped)) == []  # a typed field leaves the list


def test_threshold_rules_are_declared_once() -> None:
    """"at_0.5" and "at_valid_threshold" are quoted in code only where ThresholdRule declares them; every other
    module names a rule through it (the files' keys stay these words)."""
    quoted = re.compile(r"([\"'])(at_0\.5|at_valid_threshold)\1")
    owner = SRC / "metrics" / "classification.py"
    found = sorted(str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if p != owner and quoted.search(p.read_text()))
    assert found == []
    assert [str(r) for r in ThresholdRule] == ["at_0.5", "at_valid_threshold"] == list(map(str, THRESHOLD_RULES))
    assert json.dumps({AT_HALF: [AT_VALID]}) == '{"at_0.5": ["at_valid_threshold"]}'  # the same keys on disk


def test_a_comparison_writes_the_keys_its_readers_know() -> None:
    """A comparison made of typed parts writes the keys every reader of comparison.json knows, and reads back equal."""
    from tune.metrics.costs import LatencySettings
    from tune.runs.comparison import Costs, ModelRow, Picked, Resampling, VariantRow, Verdict, Versus

    cells = {AT_HALF: {"auc": Cell(0.9, 0.8, 1.0, 0.01, (0.89, 0.91))}, AT_VALID: {"accuracy": Cell(0.8)}}
    row = ModelRow("a (tuned)", "a", "custom_cnn", "tuned", "t1", {"lr": 0.001, "seed": None}, [0, 1], [0.9, 0.91],
                   [0.4, 0.5], "finalize/a", 1, 0.5, cells)
    test = PairedTest(0.1, 0.02, True)
    cmp = files.Comparison(
        run="r", metric="val_auc", n_test=10, test_fingerprint="ab", rows=[row],
        best={"auc": Verdict("a", 0.9, "b", 0.8, test)}, threshold_rules=dict(THRESHOLD_RULES),
        bootstrap=Resampling(1000, [0, "the test split's fingerprint"], statistic="mean over seeds"),
        ensembles=comparison.Ensembles({"seeds": "each seed"}, "chosen_seed", ["auc"], [VariantRow(
            "a (tuned)", "a", "custom_cnn", "tuned", [0, 1], 1, "seeds", "2 seeds", [0.4, 0.5], cells,
            {AT_HALF: {"auc": Versus(0.9, 0.88, test)}})]),
        picked=Picked("a", "best", "a", True, {"auc": Versus(0.9, 0.9)}),
        costs=Costs(LatencySettings(), "cpu", {"latency_ms": "ms"}, {"a": {"latency_ms": 1.5, "onnx_mb": None}}))
    plain = json.loads(json.dumps(cmp.to_plain()))
    assert files.Comparison.from_dict(plain) == cmp
    assert set(plain) == {"run", "metric", "n_test", "test_fingerprint", "rows", "best", "threshold_rules", "alpha",
                          "bootstrap", "skipped", "ensembles", "picked", "costs"}  # None parts are left out
    assert set(plain["rows"][0]) == {"model", "name", "arch", "kind", "trial_id", "config", "seeds", "valid_scores",
                                     "thresholds", "folder", "chosen_seed", "chosen_threshold", "at_0.5",
                                     "at_valid_threshold"}
    assert plain["rows"][0]["at_0.5"]["auc"] == {"value": 0.9, "low": 0.8, "high": 1.0, "t_half": 0.01,
                                                 "per_seed": [0.89, 0.91]}
    assert plain["best"]["auc"] == {"model": "a", "value": 0.9, "runner_up": "b", "runner_up_value": 0.8,
                                    "difference": 0.1, "p_value": 0.02, "significant": True, "tie": False}
    assert plain["ensembles"]["rows"][0]["vs_chosen"] == {"at_0.5": {"auc": {
        "value": 0.9, "chosen_value": 0.88, "difference": 0.1, "p_value": 0.02, "significant": True}}}
    assert plain["picked"]["metrics"] == {"auc": {"value": 0.9, "most_accurate_value": 0.9}}
    assert plain["costs"]["settings"]["batch"] == LatencySettings().batch


def test_hyperparameter_kinds_are_one_vocabulary() -> None:
    """An architecture's HParam and a space's Param take their kind from tune.models.hparams.HParamKind."""
    from tune.models.hparams import SAMPLED, VALUES, HParamKind
    from tune.models.registry import get_arch
    from tune.search.space import KINDS, Param

    assert all(isinstance(hp.kind, HParamKind) and hp.kind in VALUES for hp in get_arch("custom_cnn").hparams.values())
    assert KINDS == SAMPLED and Param("lr", "loguniform", 1e-4, 1e-2).kind is HParamKind.LOGUNIFORM  # run.json's word
    with pytest.raises(ValueError):
        Param("lr", "gaussian")
    from tune.models.detector import HParam

    with pytest.raises(ValueError):
        HParam(HParamKind.CATEGORICAL, "a")  # a kind of sampling, not of value
