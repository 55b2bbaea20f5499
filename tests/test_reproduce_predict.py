"""reproduce (exact re-run of a trial, refusing changed data) and predict (images in, P(fake) out)."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_dataset
from PIL import Image
from splits import spy_split_reads

import tune.cli
from tune.core import atomic_torch_save, atomic_write_json
from tune.runs.leaderboard import load_leaderboard
from tune.training.config import TrainConfig
from tune.training.loop import make_model


def copy_run(tiny_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "tiny"
    shutil.copytree(tiny_run, run)
    return run


def test_reproduce_passes_exactly_on_the_unchanged_run(tiny_run: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    calls = spy_split_reads(monkeypatch)
    # the overall best trial, and the best MobileNetV2 one (frozen prefix: the feature-cache path)
    mob = load_leaderboard(tiny_run).query("arch == 'mobilenet_v2'").iloc[0]["trial_id"]
    for trial in ("best", f"mobilenet_v2_{mob}"):
        assert tune.cli.main(["reproduce", str(tiny_run), "--trial", trial]) == 0
        out = capsys.readouterr().out
        assert "reproduced exactly" in out and "DIFFERS" not in out
    assert {split for _, split in calls} == {"train", "valid"}  # never the test split


def test_reproduce_names_the_epoch_whose_record_differs(tiny_run: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    run = copy_run(tiny_run, tmp_path)
    best = load_leaderboard(run).iloc[0]
    results = run / "trials" / "search" / f"{best['arch']}_{best['trial_id']}" / "result.json"
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    last = len(rows)
    rows[-1]["val_loss"] = math.nextafter(rows[-1]["val_loss"], 1.0)  # the smallest possible change
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert tune.cli.main(["reproduce", str(run)]) == 1
    out = capsys.readouterr().out
    assert f"differs at epoch(s) {last}" in out and out.count("DIFFERS") == 1


def test_reproduce_refuses_changed_data(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = copy_run(tiny_run, tmp_path)
    meta = json.loads((run / "run.json").read_text())
    data = tmp_path / "data"
    shutil.copytree(meta["data"]["root"], data)
    img = next((data / "train" / "Fake").glob("*.png"))
    pixels = np.asarray(Image.open(img)).copy()
    pixels[0, 0] = 255 - pixels[0, 0]  # one pixel of one training image
    Image.fromarray(pixels).save(img)
    meta["data"]["root"] = str(data)
    (run / "run.json").write_text(json.dumps(meta))
    assert tune.cli.main(["reproduce", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the train data") and "changed" in err[0]


def test_reproduce_unknown_trial(tiny_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert tune.cli.main(["reproduce", str(tiny_run), "--trial", "nosuch"]) == 2
    assert "trial 'nosuch' not found" in capsys.readouterr().err


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    """A small custom CNN saved the way finalize exports one (state_dict + .json beside it)."""
    cfg = TrainConfig.of(arch="custom_cnn", image_size=32, conv_blocks=1, base_width=4, head_sizes=(8,), seed=3)
    path = tmp_path / "models" / "custom_cnn.pth"
    atomic_torch_save(path, make_model(cfg).state_dict())
    atomic_write_json(path.with_suffix(".json"), {"config": cfg.to_dict(), "threshold": 0.5, "seed": 3})
    return path


def test_predict_reports_bad_images_without_failing(model_file: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    calls = spy_split_reads(monkeypatch)
    data = make_dataset(tmp_path / "imgs", n=2, size=40, splits=("test",))
    folder = data / "test"
    (folder / "Fake" / "notes.txt").write_text("not an image")  # ignored when scanning a folder
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    missing = tmp_path / "missing.png"
    args = ["predict", "--model", str(model_file), str(folder), str(corrupt), str(empty), str(missing)]
    assert tune.cli.main(args) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["path", "P(fake)", "label", "error"]
    assert "4 image(s) scored" in out and "3 unreadable" in out and "notes.txt" not in out

    csv_path = tmp_path / "out" / "pred.csv"
    assert tune.cli.main([*args, "--csv", str(csv_path)]) == 0
    with open(csv_path, newline="") as f:
        rows = {r["path"]: r for r in csv.DictReader(f)}
    assert len(rows) == 7
    for p in folder.rglob("*.png"):
        r = rows[str(p)]
        assert r["error"] == "" and 0 <= float(r["p_fake"]) <= 1
        assert r["label"] == ("Fake" if float(r["p_fake"]) >= 0.5 else "Real")  # the model's threshold
    assert rows[str(corrupt)]["error"].startswith("unreadable") and rows[str(corrupt)]["p_fake"] == ""
    assert rows[str(empty)]["error"] == "zero bytes" and rows[str(missing)]["error"].startswith("cannot open")
    assert calls == []  # predict reads files, never a dataset split


def test_predict_refuses_a_model_without_metadata(model_file: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    model_file.with_suffix(".json").unlink()
    assert tune.cli.main(["predict", "--model", str(model_file), str(tmp_path)]) == 2
    assert "model record not found" in capsys.readouterr().err
