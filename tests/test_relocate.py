"""Run folders travel: copied or moved anywhere, every command works on the copy and none reaches back.

One tiny finished search (time-budgeted, with a held-out validation source) is made once per module; each
test copies it, with its data, and works on the copy. The original's place is then gone or left alone:
- moved (original deleted): --resume, --extend, finalize, reproduce (exactly) and report all work, the data
  re-pointed with --data/--valid-extra, and the copy's optuna.db holds every trial;
- copied (original kept): extending the copy leaves every byte of the original as it was;
- other images under --data, or an optuna.db that is missing or unreadable, are one line each.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import optuna
import pytest
from conftest import TINY_SPACE, make_dataset, run_tiny_search

from tune.cli import main
from tune.runs.leaderboard import load_leaderboard
from tune.search.snapshots import put_back

pytestmark = pytest.mark.slow

ONE_ARCH = TINY_SPACE[:TINY_SPACE.index("  mobilenet_v2:")]
NAME = "trip"


@pytest.fixture(scope="module")
def made(ray_session, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished search under made/: results/trip, its data/ and its held-out source gens/gen_a."""
    top = tmp_path_factory.mktemp("made")
    gens = top / "gens"
    make_dataset(gens, n=6, size=32, seed=3, splits=("gen_a",))
    run_tiny_search(top, name=NAME, space=ONE_ARCH, data=make_dataset(top / "data", n=10, size=32),
                    valid_extra=[gens], trials=2, time_budget=600.0)  # 2 trials, well within the time
    return top


def copy_of(made: Path, where: Path) -> Path:
    shutil.copytree(made, where, ignore=shutil.ignore_patterns("cache"))
    return where


def trials_in(run: Path) -> list[str]:
    study = optuna.load_study(study_name=f"{NAME}-custom_cnn", storage=f"sqlite:///{run / 'optuna.db'}")
    return sorted(t.user_attrs["ray_trial_id"] for t in study.trials)


def contents(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_moved_run_works_with_every_command(made: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    top = copy_of(made, tmp_path / "first")
    new = copy_of(top, tmp_path / "somewhere" / "else")
    shutil.rmtree(top)  # the place the run was made in is gone
    monkeypatch.chdir(tmp_path)
    storage = ["--storage", str(new / "results")]
    moved = ["--data", str(new / "data"), "--valid-extra", str(new / "gens")]
    run = new / "results" / NAME
    record = json.loads((run / "run.json").read_text())
    assert record["space"]["budget"]["time_s"] == 600.0 and record["data"]["valid_extra"]

    # the data moved too: reproduce and finalize are told where it is now, and find the very same images
    assert main(["reproduce", NAME, *storage, *moved]) == 0
    assert "reproduced exactly" in capsys.readouterr().out
    assert json.loads((run / "run.json").read_text()) == record  # a check writes nothing
    assert main(["finalize", NAME, *storage, "--seeds", "1", *moved]) == 0
    record = json.loads((run / "run.json").read_text())
    assert record["data"]["root"] == str(new / "data")  # finalize found them: run.json points there now
    assert record["data"]["valid_extra"]["dirs"] == [str(new / "gens")]
    assert json.loads((run / "models" / "custom_cnn.json").read_text())["source"] == "finalize/custom_cnn/seed0"

    # the search goes on from the copy's own optuna.db (the original's folder no longer exists)
    assert main(["search", "--name", NAME, "--resume", *storage, "--no-finalize"]) == 0
    assert main(["search", "--name", NAME, "--extend", "1", *storage, "--no-finalize"]) == 0
    board = load_leaderboard(run)
    assert len(board) == 3 and trials_in(run) == sorted(board["trial_id"])
    assert main(["reproduce", NAME, *storage]) == 0 and "reproduced exactly" in capsys.readouterr().out
    assert main(["report", NAME, *storage]) == 0 and (run / "report.html").is_file()
    assert main(["evaluate", "--run", str(run), str(new / "data" / "valid"), "--out", str(tmp_path / "ev")]) == 0
    assert main(["export", "--model", str(run / "models" / "custom_cnn.pth"), "--format", "onnx"]) == 0
    assert (run / "models" / "custom_cnn-onnx" / "MODEL_CARD.md").is_file()
    assert not top.exists()  # nothing made the old place again


def test_extending_a_copy_leaves_the_original_as_it_was(made: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    original = copy_of(made, tmp_path / "original")
    copy = tmp_path / "copy" / "results"
    shutil.copytree(original / "results", copy)  # the run alone; the data stays where run.json says
    monkeypatch.chdir(tmp_path)
    before = contents(original)
    assert main(["search", "--name", NAME, "--extend", "1", "--storage", str(copy), "--no-finalize"]) == 0
    assert contents(original) == before
    assert len(trials_in(copy / NAME)) == 3 and len(trials_in(original / "results" / NAME)) == 2


def one_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_other_data_and_a_lost_optuna_db_are_one_line(made: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    top = copy_of(made, tmp_path / "top")
    monkeypatch.chdir(tmp_path)
    storage = ["--storage", str(top / "results")]
    other = make_dataset(tmp_path / "other", n=10, size=32, seed=9)
    for cmd in (["finalize", NAME, "--seeds", "1"], ["reproduce", NAME]):
        err = one_line(capsys, [*cmd, *storage, "--data", str(other)])
        assert "the train data" in err and "fingerprint" in err and str(other) in err
    err = one_line(capsys, ["reproduce", NAME, *storage, "--valid-extra", str(other)])
    assert "fingerprint" in err
    assert not (top / "results" / NAME / "finalize").exists()  # refused before any training

    run = top / "results" / NAME
    (run / "optuna.db").unlink()
    err = one_line(capsys, ["search", "--name", NAME, "--resume", *storage])
    assert "optuna.db is missing" in err and "finalize" in err and "still work" in err
    assert main(["leaderboard", NAME, *storage]) == 0
    assert main(["report", NAME, *storage]) == 0
    assert "optuna.db is missing" in (run / "report.html").read_text()
    assert not (run / "optuna.db").exists()  # reading the run never made an empty one
    (run / "optuna.db").write_bytes(b"not a database at all" * 100)
    err = one_line(capsys, ["search", "--name", NAME, "--extend", "1", *storage])
    assert "not a readable Optuna database" in err


def test_a_ray_snapshot_a_killed_copy_cut_short_is_one_line(made: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray rewrites experiment_state-*.json in place when it copies it into the run folder: a kill mid-copy can
    leave it cut short, and Ray keeps no older one. The search keeps a whole copy (.whole/, tune/search/snapshots.py)
    and puts it back; without one (a run of an earlier version, or killed before the first copy) --resume says so
    in one line, and reading the run still works."""
    top = copy_of(made, tmp_path / "top")
    monkeypatch.chdir(tmp_path)
    storage = ["--storage", str(top / "results")]
    experiment = top / "results" / NAME / "trials" / "search"
    (state,) = experiment.glob("experiment_state-*.json")
    whole = state.read_text()
    assert put_back(str(experiment)) is None  # a search that ended: Ray's final snapshot, the kept copy's step
    state.write_text(whole[:100])
    assert "was cut short when the search was stopped; resuming from the whole one" in put_back(str(experiment))
    assert json.loads(state.read_text()) == json.loads(whole)  # kept after Ray's final snapshot (on_experiment_end)
    assert put_back(str(experiment)) is None

    state.write_text(whole[:100])
    shutil.rmtree(experiment / ".whole")
    assert put_back(str(experiment)) is None
    err = one_line(capsys, ["search", "--name", NAME, "--resume", *storage])
    assert state.name in err and "cut short" in err and "leaderboard" in err
    assert main(["leaderboard", NAME, *storage]) == 0
    assert len(load_leaderboard(top / "results" / NAME)) == 2  # its trials, read from their own folders
