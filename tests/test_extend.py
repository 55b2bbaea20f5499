"""`search --extend N`: more trials for a finished run, TPE going on from its saved Optuna study."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from conftest import TINY_SPACE, run_tiny_search

from tune.cli import main
from tune.runs.leaderboard import load_leaderboard

pytestmark = pytest.mark.slow

ONE_ARCH = TINY_SPACE[:TINY_SPACE.index("  mobilenet_v2:")]


def test_extend_adds_trials_to_the_same_study_and_finalize_reruns(ray_session, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = run_tiny_search(tmp_path, name="ext", space=ONE_ARCH)  # 2 trials
    before = load_leaderboard(run_dir)
    assert len(before) == 2
    storage = ["--storage", str(tmp_path / "results")]
    # --resume of the finished run (whose trials keep_best pruned to one checkpoint each) runs nothing again
    assert main(["search", "--name", "ext", "--resume", *storage, "--no-finalize"]) == 0
    assert load_leaderboard(run_dir).equals(before)
    assert main(["finalize", "ext", *storage, "--seeds", "1"]) == 0
    # --extend needs only the run's name: its space and data come from run.json
    assert main(["search", "--name", "ext", "--extend", "1", *storage, "--no-finalize"]) == 0
    after = load_leaderboard(run_dir)
    assert len(after) == 3 and set(before["trial_id"]) < set(after["trial_id"])
    assert sorted(after["trial_no"]) == [1, 2, 3]
    new_id = after.loc[after["trial_no"] == 3, "trial_id"].item()
    assert new_id not in set(before["trial_id"])
    assert (run_dir / "trials" / "extend1" / f"custom_cnn_{new_id}" / "result.json").is_file()
    record = json.loads((run_dir / "run.json").read_text())
    assert [e["trials"] for e in record["extensions"]] == [1]
    # One study: the new trial is its third, sampled after the first two were told (TPE goes on from them).
    study = optuna.load_study(study_name="ext-custom_cnn", storage=f"sqlite:///{run_dir / 'optuna.db'}")
    assert [t.user_attrs["ray_trial_id"] for t in sorted(study.trials, key=lambda t: t.number)][-1] == new_id
    assert len(study.trials) == 3 and all(t.state.is_finished() for t in study.trials)
    # finalize reruns on the extended run and picks the best trial of all three
    assert main(["finalize", "ext", *storage, "--seeds", "1"]) == 0
    cmp = json.loads((run_dir / "comparison.json").read_text())
    assert cmp["rows"][0]["trial_id"] == after.iloc[0]["trial_id"]
    # and a second extension gets its own experiment
    assert main(["search", "--name", "ext", "--extend", "1", *storage, "--no-finalize"]) == 0
    assert len(load_leaderboard(run_dir)) == 4 and (run_dir / "trials" / "extend2").is_dir()


@pytest.mark.parametrize("args, message", [
    (["--name", "nope", "--extend", "1"], "nothing to extend"),
    (["--name", "x", "--extend", "0"], "--extend must be >= 1"),
    (["--extend", "1"], "give --name"),
    (["--name", "x", "--extend", "1", "--space", "s.yaml"], "leave out --space"),
    (["--name", "x", "--extend", "1", "--resume"], "do not go together"),
])
def test_extend_refuses_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                  message: str) -> None:
    (tmp_path / "results" / "x").mkdir(parents=True)
    (tmp_path / "results" / "x" / "run.json").write_text("{}")
    code = main(["search", *args, "--storage", str(tmp_path / "results"), "--no-finalize"])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
