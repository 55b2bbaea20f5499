"""A time budget's deadline kept mid-epoch (tune/training/deadline.py), without Ray: fit drops the epoch it cuts and
keeps its best completed one, a feature cache it cuts leaves no file, the trial's last report (no epoch) is read back
as how it ended, and the scheduler keeps that report from ASHA. The search end to end: tests/test_search.py."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from conftest import make_dataset

import tune.training.deadline as deadline
from tune.data.images import ImageSet, load_split
from tune.runs.layout import trial_folder
from tune.runs.trials import CUT_SHORT, SCORE, last_timestamp, read_experiment
from tune.training import cache
from tune.training.config import TrainConfig
from tune.training.deadline import OUT_OF_TIME, OutOfTime, until
from tune.training.loop import fit, make_model

pytestmark = pytest.mark.usefixtures("one_thread")

CNN = TrainConfig.of(arch="custom_cnn", image_size=32, batch_size=8, epochs=4, lr=3e-3, conv_blocks=1, base_width=4,
                     head_sizes=(8,), patience=10)


@pytest.fixture(scope="module")
def splits(tmp_path_factory: pytest.TempPathFactory) -> tuple[ImageSet, ImageSet]:
    root = make_dataset(tmp_path_factory.mktemp("deadline") / "data", n=8, size=32, splits=("train", "valid"))
    return load_split(root, "train", 32), load_split(root, "valid", 32)


class Recorder:
    """A report hook keeping each reported row and the live weights then."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def __call__(self, row: dict[str, Any], state: Any) -> None:
        self.rows.append(row)
        self.weights[row["epoch"]] = copy.deepcopy(state()["trained"])


def test_a_deadline_mid_epoch_keeps_the_best_completed_epoch_and_reports_no_partial_one(
        splits, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recorder()
    checks_after_epoch_1: list[int] = []

    def clock() -> float:  # the deadline passes at the second check after epoch 1's report: one step of epoch 2 ran
        if rec.rows:
            checks_after_epoch_1.append(1)
        return math.inf if len(checks_after_epoch_1) >= 2 else 0.0

    monkeypatch.setattr(deadline, "time", SimpleNamespace(time=clock))
    with until(1e12):
        result = fit(CNN, *splits, log=None, report=rec)
    assert result.ended == OUT_OF_TIME == "time_budget" and result.cut_s > 0
    assert [r["epoch"] for r in result.history] == [1] and [r["epoch"] for r in rec.rows] == [1]
    assert result.history[0]["ended"] == ""  # the epoch row says nothing of the cut: the trial's last report does
    assert result.best_epoch == 1
    trained = {k: v for k, v in result.model.state_dict().items() if k in rec.weights[1]}
    assert all(torch.equal(trained[k], rec.weights[1][k]) for k in rec.weights[1])  # not epoch 2's step


def test_a_trial_that_starts_past_its_deadline_builds_and_reports_nothing(splits) -> None:
    rec = Recorder()
    with until(0.0):
        result = fit(CNN, *splits, log=None, report=rec)
    assert result.ended == OUT_OF_TIME and result.history == [] and rec.rows == [] and result.best_epoch == 0
    assert result.cache_mode.startswith("none")
    deadline.check()  # outside `until`, no deadline: nothing raised


def test_a_feature_cache_cut_by_the_deadline_leaves_no_file(splits, tmp_path: Path) -> None:
    model = make_model(TrainConfig.of(arch="mobilenet_v2", image_size=32, unfrozen_blocks=1, weights="none"))
    with until(0.0), pytest.raises(OutOfTime):
        cache.cached_encode(model, splits[1], flips=(False,), cache_dir=tmp_path)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def write_trial(root: Path, trial_id: str, reports: list[dict[str, Any]]) -> None:
    d = root / trial_folder("custom_cnn", trial_id)
    d.mkdir(parents=True)
    (d / "result.json").write_text("".join(json.dumps(r) + "\n" for r in reports))


def test_a_trial_cut_short_reads_back_as_time_budget_with_its_completed_epochs_only(tmp_path: Path) -> None:
    epoch = {"epoch": 1, "val_auc": 0.7, "best_epoch": 1, SCORE: 0.7, "timestamp": 100, "time_total_s": 10, "ended": ""}
    last = {"ended": OUT_OF_TIME, CUT_SHORT: 12.5, "epochs_done": 1, "best_epoch": 1, SCORE: 0.7, "timestamp": 130,
            "time_total_s": 40}
    write_trial(tmp_path, "0000000a", [epoch, last])  # started at 90
    write_trial(tmp_path, "0000000b", [{**last, "epochs_done": 0, "best_epoch": 0, SCORE: math.nan,
                                        "time_total_s": 60}])  # started at 70, cut before its first epoch
    empty, cut = read_experiment(str(tmp_path), "custom_cnn")  # in the order they started
    assert cut.results == [epoch] and cut.ended == "time_budget" and cut.last == last
    assert empty.results == [] and empty.ended == "time_budget"
    assert last_timestamp(str(tmp_path)) == 130  # an interrupted budget's time spent counts the last report too


def test_the_scheduler_keeps_a_cut_short_report_from_asha() -> None:
    from tune.search.budget import Budget
    from tune.search.scheduler import ArchScheduler

    budget = Budget(("custom_cnn",), seconds=3600.0)
    budget.start(slots=1)
    scheduler = ArchScheduler(budget, metric=SCORE, mode="max", max_t=4, grace_period=1, reduction_factor=2)
    trial = SimpleNamespace(trial_id="t1", config={"arch": "custom_cnn"})
    seen: list[dict[str, Any]] = []
    scheduler.children["custom_cnn"] = SimpleNamespace(on_trial_result=lambda c, t, r: seen.append(r))
    assert scheduler.on_trial_result(None, trial, {CUT_SHORT: 3.0, SCORE: 0.7, "ended": OUT_OF_TIME}) == "STOP"
    assert seen == [] and scheduler.why_stopped("t1") == "time_budget"
