"""Run folders written by earlier versions still work with every command.

Two fixtures, each a tiny search + finalize (custom_cnn, 2 trials of 2 epochs at 32 px, one seed) made by
an earlier version of this code, their reports and plots left out (they are rebuilt):
- old_layout_run: before one Tuner ran every architecture: one Ray experiment per architecture
  (trials/custom_cnn/...), no `monitor` and no augmentation options in its configs, `blur_prob`/`jpeg_prob`
  at 0, a finalize without flipped or valid predictions, cells in finalize's earlier schema;
- pre_layout_run: before the layout by stage (a flat `tune` package: search.py, searcher.py ...): Ray pickled its
  searcher, scheduler, callback and trainable under those module names, which `--resume` unpickles.
Their data is conftest.make_dataset(n=6, size=32), made again here byte for byte (the fixtures' fingerprints
check that); run.json's data root is pointed at it, as after moving a dataset.
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

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE = FIXTURES / "old_layout_run"


def copied(name: str, run_name: str, tmp_path: Path) -> Path:
    data = make_dataset(tmp_path / "data", n=6, size=32)
    run = tmp_path / "results" / run_name
    shutil.copytree(FIXTURES / name, run)
    record = json.loads((run / "run.json").read_text())
    record["data"]["root"] = str(data)
    (run / "run.json").write_text(json.dumps(record))
    return run


@pytest.fixture
def old_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return copied("old_layout_run", "old", tmp_path)


def test_result_files_of_earlier_versions_load_as_this_versions_types(old_run: Path) -> None:
    """comparison.json from before ensembles (cells as mean/boot_low/boot_high) and an evaluation.json from
    before the one cell schema (top-level auc, at_threshold) load as Comparison and Evaluation; what they lack is
    None, and the cells read the same."""
    from tune.metrics.classification import AT_VALID
    from tune.runs.files import Comparison, Evaluation
    from tune.runs.layout import Run

    cmp = Comparison.load(old_run / "comparison.json")
    old = json.loads((old_run / "comparison.json").read_text())
    assert cmp.ensembles is None and cmp.tradeoff is None and cmp.evaluation is None and cmp.seeds == 1
    assert cmp.rows[0].cell("auc").value == old["rows"][0]["at_0.5"]["auc"]["mean"]
    record = json.loads((old_run / "run.json").read_text())
    assert Run(old_run).read().data.train_fingerprint == record["data"]["train_fingerprint"]
    row = {"model": "m", "source": "s", "condition": "clean", "auc": {"value": 0.7, "low": 0.6, "high": 0.8},
           "at_threshold": {"accuracy": {"value": 0.6, "low": 0.5, "high": 0.7}}}
    ev = Evaluation.from_dict({"rows": [row], "bootstrap": {"resamples": 1000, "seed": 0}, "unknown_later_field": 1})
    assert ev.models == [] and ev.paired == [] and ev.rows[0].cell("auc").text() == "0.700 [0.600, 0.800]"
    assert ev.rows[0].cell("accuracy", AT_VALID).value == 0.6
    assert ev.rows[0].cell("auc", AT_VALID) == ev.rows[0].cell("auc")  # a ranking metric: the same at either rule
    assert set(ev.to_plain()["rows"][0]) == {"model", "source", "condition", "n_fake", "n_real", "at_0.5",
                                              "at_valid_threshold", "note"}  # written in this version's schema


def test_an_old_comparison_json_reads_into_typed_records() -> None:
    """Both fixtures' comparison.json (finalize's earlier cell schema, `numpy_seed`; one with ensembles, one
    without) load as records with attributes, and write back the keys they were read from."""
    from tune.metrics.cells import Cell
    from tune.metrics.classification import AT_HALF, AT_VALID
    from tune.runs.comparison import Ensembles, ModelRow, Resampling, VariantRow, Verdict
    from tune.runs.files import Comparison

    for name in ("old_layout_run", "pre_layout_run"):
        old = json.loads((FIXTURES / name / "comparison.json").read_text())
        cmp = Comparison.from_dict(old)
        row, was = cmp.rows[0], old["rows"][0]
        assert isinstance(row, ModelRow) and isinstance(cmp.best["auc"], Verdict)
        assert (row.name, row.arch, row.kind, row.trial_id) == (was["name"], was["arch"], "tuned", was["trial_id"])
        assert row.seeds == was["seeds"] and row.chosen_seed == was["chosen_seed"] and cmp.seeds == 1
        auc = row.cell("auc")
        assert isinstance(auc, Cell) and (auc.value, auc.low, auc.high) == tuple(
            was["at_0.5"]["auc"][k] for k in ("mean", "boot_low", "boot_high"))
        assert row.cell("accuracy", AT_VALID).value == was["at_valid_threshold"]["accuracy"]["mean"]
        assert cmp.best["auc"].model == old["best"]["auc"]["model"] and cmp.best["auc"].test is None
        boot = old["bootstrap"]  # `numpy_seed` then, `seed` now
        assert cmp.bootstrap == Resampling(1000, boot["numpy_seed"], statistic=boot["statistic"])
        assert list(cmp.threshold_rules) == [AT_HALF, AT_VALID]
        if "ensembles" in old:  # pre_layout_run: five predictors of its one model
            assert isinstance(cmp.ensembles, Ensembles) and all(isinstance(r, VariantRow) for r in cmp.ensembles.rows)
            ens = cmp.ensembles.row(row.name, "ensemble")
            assert ens is not None and ens.versus("auc") is not None
            assert ens.versus("auc").value == old["ensembles"]["rows"][3]["vs_chosen"]["at_0.5"]["auc"]["value"]
        else:
            assert cmp.ensembles is None
        plain = json.loads(json.dumps(cmp.to_plain()))  # what a save writes: the same keys, the same values
        assert plain.keys() == old.keys() and plain["rows"][0].keys() == was.keys()
        assert plain["best"] == old["best"] and plain.get("ensembles", {}).keys() == old.get("ensembles", {}).keys()
        assert Comparison.from_dict(plain) == cmp


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


@pytest.mark.slow
def test_a_run_from_before_the_layout_by_stage_resumes_and_reads(ray_session, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import pickle

    from tune.search.searcher import studies_at

    monkeypatch.chdir(tmp_path)
    run = copied("pre_layout_run", "pre21", tmp_path)
    experiment = run / "trials" / "search"
    with studies_at(f"sqlite:///{run / 'optuna.db'}"):  # their Optuna storage names the maker's folder
        for f in [experiment / "tuner.pkl", *experiment.glob("searcher-state-*.pkl")]:
            assert pickle.loads(f.read_bytes())  # Ray's pickles name tune.searcher, tune.search.run_trial ...
    # --resume restores the Tuner (every pickle of it); the search had finished, so nothing runs again
    assert main(["search", "--name", "pre21", "--resume", "--no-finalize"]) == 0
    assert len(load_leaderboard(run)) == 2
    assert main(["reproduce", "pre21"]) == 0 and "reproduced exactly" in capsys.readouterr().out
    assert main(["finalize", "pre21", "--seeds", "1"]) == 0 and "already done, kept" in capsys.readouterr().out
    assert main(["report", "pre21"]) == 0
