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
from tune.training.config import TrainConfig

SRC = Path(tune.__file__).parent
RECORD_MODULES = (files, comparison, evaluation)
UNTYPED = re.compile(r"\bdict\[str, Any\]")
# Fields that stay in their owner's schema, with why (none now). Any field typed `dict[str, Any]` fails the test below.
KEPT_AS_WRITTEN: dict[str, str] = {}


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
    row = ModelRow("a (tuned)", "a", "custom_cnn", "tuned", "t1", TrainConfig.of(arch="custom_cnn", lr=0.001, seed=1),
                   [0, 1], [0.9, 0.91], [0.4, 0.5], "finalize/a", 1, 0.5, cells)
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
    # the row's config is written as finalize always wrote it: every option and hyperparameter, the seed null
    assert plain["rows"][0]["config"] == {**TrainConfig.of(arch="custom_cnn", lr=0.001).to_dict(), "seed": None}


def test_a_rows_config_is_the_chosen_seeds_train_config() -> None:
    """A row's config reads back as a TrainConfig with the row's chosen seed, from a config of any version: one
    that lacks options added since (they take their defaults) or holds keys this version does not know (a
    retired option, a later one: left alone); one this version cannot read at all is None, written as null."""
    from tune.runs.comparison import ModelRow

    old = {"arch": "custom_cnn", "base_width": 4, "batch_size": 16, "blur_prob": 0.0, "conv_blocks": 2,
           "dropout": 0.5, "epochs": 2, "head_sizes": [8], "hflip": True, "image_size": 32, "jpeg_prob": 0.0,
           "lr": 0.00075, "patience": 3, "seed": None, "threads": 1, "use_cache": True, "weight_decay": 0.0,
           "an_option_of_a_later_version": "x"}
    was = {"model": "custom_cnn (tuned)", "name": "custom_cnn", "arch": "custom_cnn", "kind": "tuned",
           "trial_id": "5219fbc1", "config": old, "seeds": [0, 1], "valid_scores": [0.6, 0.7],
           "thresholds": [0.49, 0.5], "folder": "finalize/custom_cnn", "chosen_seed": 1, "chosen_threshold": 0.5,
           "at_0.5": {"auc": {"mean": 0.6, "boot_low": 0.5, "boot_high": 0.7}}}
    row = ModelRow.from_dict(was)
    assert isinstance(row.config, TrainConfig) and row.config.seed == row.chosen_seed == 1
    assert (row.config.lr, row.config.batch_size, row.config.threads, row.config.head_sizes) == (0.00075, 16, 1, (8,))
    assert (row.config.augment, row.config.optimizer, row.config.resize) == ("none", "adam", "bilinear")  # defaults
    plain = json.loads(json.dumps(row.to_plain()))
    assert plain.keys() == was.keys() and plain["config"]["seed"] is None
    assert {k: plain["config"][k] for k in set(old) - {"blur_prob", "jpeg_prob", "an_option_of_a_later_version"}} \
        == {k: v for k, v in old.items() if k in plain["config"]}
    assert ModelRow.from_dict(plain) == row  # written, read back: equal
    unreadable = ModelRow.from_dict({**was, "config": {**old, "arch": "an_arch_of_a_later_version"}})
    assert unreadable.config is None and unreadable.to_plain()["config"] is None
    assert ModelRow.from_dict(unreadable.to_plain()) == unreadable


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
