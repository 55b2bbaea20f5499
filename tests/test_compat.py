"""A run folder written by the previous version still works with every command.

tests/fixtures/old_layout_run is a tiny search + finalize (custom_cnn, 2 trials of 2 epochs at 32 px, one
seed) made by the version before one Tuner ran every architecture: one Ray experiment per architecture
(trials/custom_cnn/...), no `monitor` and no augmentation options in its configs, `blur_prob`/`jpeg_prob`
at 0, a finalize without flipped or valid predictions. Its report and plots were left out (they are
rebuilt). Its data is conftest.make_dataset(n=6, size=32), made again here byte for byte (the fixture's
fingerprints check that); run.json's data root is pointed at it, as after moving a dataset.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import make_dataset

from tune.cli import main
from tune.runs.leaderboard import load_leaderboard

FIXTURE = Path(__file__).parent / "fixtures" / "old_layout_run"


@pytest.fixture
def old_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    data = make_dataset(tmp_path / "data", n=6, size=32)
    run = tmp_path / "results" / "old"
    shutil.copytree(FIXTURE, run)
    record = json.loads((run / "run.json").read_text())
    record["data"]["root"] = str(data)
    (run / "run.json").write_text(json.dumps(record))
    return run


def test_an_old_run_is_read_by_every_command(old_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    board = load_leaderboard(old_run)
    before = pd.read_csv(FIXTURE / "leaderboard.csv")
    assert sorted(board["trial_id"]) == sorted(before["trial_id"]) and len(board) == 2
    assert dict(zip(board["trial_id"], board["ended"])) == dict(zip(before["trial_id"], before["ended"]))
    # the old rule kept the lowest val loss (no monitor recorded = val_loss): its score is the AUC there
    assert board["best_epoch"].notna().all() and board["score"].between(0, 1).all()
    assert main(["leaderboard", "old"]) == 0
    assert "trials per architecture: custom_cnn 2" in capsys.readouterr().out
    # the default path (no augmentation) gives the very numbers the old version gave
    assert main(["reproduce", "old"]) == 0
    assert "reproduced exactly" in capsys.readouterr().out
    # finalize keeps the old seed (same config and data, as configs and by content) and scores what it lacks
    assert main(["finalize", "old", "--seeds", "1"]) == 0
    out = capsys.readouterr().out
    assert "seed 0: already done, kept" in out and "scored now" in out
    cmp = json.loads((old_run / "comparison.json").read_text())
    assert cmp["rows"][0]["trial_id"] == json.loads((FIXTURE / "comparison.json").read_text())["rows"][0]["trial_id"]
    assert "ensembles" in cmp
    assert main(["report", "old"]) == 0 and (old_run / "report.html").stat().st_size > 100_000
    assert main(["evaluate", "--run", "old", str(old_run.parent.parent / "data" / "valid")]) == 0


@pytest.mark.slow
def test_an_old_run_can_be_extended_not_resumed(ray_session, old_run: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", "--name", "old", "--resume", "--no-finalize"]) == 2
    assert "started by an earlier version" in capsys.readouterr().err
    assert main(["search", "--name", "old", "--extend", "1", "--no-finalize"]) == 0
    board = load_leaderboard(old_run)
    assert len(board) == 3 and sorted(board["trial_no"]) == [1, 2, 3]
    new = board.loc[board["trial_no"] == 3, "trial_id"].item()
    assert (old_run / "trials" / "extend1" / f"custom_cnn_{new}" / "result.json").is_file()  # the new layout
    record = json.loads((old_run / "run.json").read_text())
    assert "experiment" not in record and record["extensions"][0]["experiment"] == "extend1"
