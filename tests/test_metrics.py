"""Metrics against cases computed by hand. Positive class: Fake = 1."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tune.metrics.classification import bce_loss, binary_metrics, equal_error_rate, youden_threshold

Y = [0, 0, 1, 1]
P = [0.1, 0.4, 0.35, 0.8]


def test_binary_metrics_hand_case() -> None:
    m = binary_metrics(np.array(Y), np.array(P))
    # threshold 0.5: predictions [0, 0, 0, 1]
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (1, 0, 1, 2)
    assert m["accuracy"] == 0.75
    assert m["precision"] == 1.0 and m["recall"] == 0.5
    assert m["f1"] == pytest.approx(2 / 3)
    # pairs (fake, real): 0.35>0.1, 0.35<0.4, 0.8>0.1, 0.8>0.4 -> 3 of 4
    assert m["auc"] == pytest.approx(0.75)
    # ranked 0.8(F) 0.4(R) 0.35(F) 0.1(R): AP = 0.5 * 1 + 0.5 * 2/3
    assert m["ap"] == pytest.approx(5 / 6)
    assert m["eer"] == pytest.approx(0.5)


def test_binary_metrics_other_threshold() -> None:
    m = binary_metrics(Y, P, threshold=0.3)  # predictions [0, 1, 1, 1]
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 1, 0, 1)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == 1.0
    assert m["f1"] == pytest.approx(0.8) and m["accuracy"] == 0.75
    assert m["auc"] == pytest.approx(0.75)  # threshold-free


def test_threshold_is_inclusive_and_labels_may_be_float() -> None:
    m = binary_metrics(np.array([1.0, 0.0], dtype=np.float32), np.array([0.5, 0.49]))
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (1, 0, 0, 1)


def test_degenerate_cases() -> None:
    m = binary_metrics([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], threshold=0.9)  # nothing predicted fake
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["f1"] == 0.0
    assert m["auc"] == 1.0 and m["eer"] == 0.0
    one = binary_metrics([1, 1, 1], [0.2, 0.7, 0.9])
    assert one["accuracy"] == pytest.approx(2 / 3) and one["recall"] == pytest.approx(2 / 3)
    assert math.isnan(one["auc"]) and math.isnan(one["ap"]) and math.isnan(one["eer"])
    ties = binary_metrics([0, 1], [0.5, 0.5])
    assert ties["auc"] == 0.5 and ties["eer"] == pytest.approx(0.5)


def test_equal_error_rate_hand_cases() -> None:
    assert equal_error_rate(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 0.0
    assert equal_error_rate(np.array([0, 1]), np.array([0.9, 0.1])) == 1.0  # perfectly wrong
    # thresholds above 0.6: FPR 0, FNR 1; between 0.5 and 0.6: FPR 1/3, FNR 1; below 0.5: FPR 1/3, FNR 0.
    # The curves cross on the vertical segment at FPR = FNR = 1/3.
    assert equal_error_rate(np.array([0, 0, 0, 1]), np.array([0.1, 0.2, 0.6, 0.5])) == pytest.approx(1 / 3)
    # A tie between a real (0.5) and the fake (0.5): the ROC goes straight from (0, FNR 1) to
    # (FPR 1/2, FNR 0), i.e. FNR = 1 - 2 FPR, which equals FPR at 1/3.
    assert equal_error_rate(np.array([0, 0, 1]), np.array([0.3, 0.5, 0.5])) == pytest.approx(1 / 3)
    assert equal_error_rate(np.array(Y), np.array(P)) == pytest.approx(0.5)


def test_youden_threshold() -> None:
    y, p = np.array([0, 0, 1, 1]), np.array([0.1, 0.3, 0.6, 0.9])
    t = youden_threshold(y, p)
    assert t == pytest.approx(0.6)
    m = binary_metrics(y, p, threshold=t)
    assert m["recall"] == 1.0 and m["fp"] == 0
    # Scores that rank every real above every fake: the best J is 0, at "predict nothing fake".
    assert youden_threshold(np.array([0, 1]), np.array([0.9, 0.1])) == 1.0
    y2, p2 = np.array([0, 0, 0, 1, 1, 1]), np.array([0.2, 0.3, 0.85, 0.4, 0.8, 0.9])
    # J = TPR - FPR at 0.9: 1/3 - 0; 0.85: 1/3 - 1/3; 0.8: 2/3 - 1/3; 0.4: 1 - 1/3; 0.3: 1 - 2/3.
    assert youden_threshold(y2, p2) == pytest.approx(0.4)


def test_bce_loss_matches_torch() -> None:
    assert bce_loss(np.array([1.0, 0.0]), np.array([0.0, 0.0])) == pytest.approx(math.log(2))
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 64).astype(np.float64)
    z = rng.normal(0, 5, 64)
    z[:4] = [80.0, -80.0, 300.0, -300.0]  # no overflow, no log(0)
    ref = torch.nn.BCEWithLogitsLoss()(torch.from_numpy(z), torch.from_numpy(y)).item()
    got = bce_loss(y, z)
    assert math.isfinite(got) and got == pytest.approx(ref, rel=1e-12)
    assert bce_loss(np.array([1.0]), np.array([-1000.0])) == pytest.approx(1000.0)


def test_better_and_best_index_are_the_one_rule_for_direction() -> None:
    from tune.metrics.classification import best_index, better, mode_of

    nan = float("nan")
    assert better(0.9, 0.8, "max") and better(0.1, 0.2, "min") and not better(0.8, 0.9, "max")
    assert not better(nan, 0.1, "max") and better(0.1, nan, "min")  # NaN never wins
    assert best_index([nan, 0.5, 0.7, 0.7], "max") == 2  # first on ties
    assert best_index([0.3, 0.2, 0.2], "min") == 1
    assert best_index([nan, nan], "max") is None and best_index([], "min") is None
    assert mode_of("best_val_eer") == "min" and mode_of("val_ap") == "max" and mode_of("val_loss") == "min"


def test_a_declared_metric_is_a_search_metric_and_a_history_column() -> None:
    """val_ap and val_eer exist because metrics.METRICS declares ap and eer: nothing else lists them."""
    from tune.metrics.classification import METRICS, search_metrics
    from tune.search.space import parse_space
    from tune.training.records import HISTORY_FIELDS

    assert {"val_ap", "val_eer"} <= set(search_metrics()) and {"val_ap", "val_eer"} <= set(HISTORY_FIELDS)
    space = parse_space({"metric": "val_ap", "architectures": {"custom_cnn": {}}})
    assert space.mode == "max" == METRICS["ap"].mode
    assert parse_space({"metric": "val_eer", "architectures": {"custom_cnn": {}}}).mode == "min"
