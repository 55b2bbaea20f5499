"""`python -m tune train`: help, a tiny run writing its folder, and user errors as one line with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_dataset
from test_data import LAYOUT_ERRORS, add_bad_images, layout

from tune.cli import main

REPO = Path(__file__).resolve().parent.parent
FAST = ["--image-size", "32", "--batch-size", "8", "--conv-blocks", "1", "--base-width", "4", "--head-sizes", "8",
        "--threads", "1"]
FAST_PRETRAINED = ["--image-size", "32", "--batch-size", "8", "--head-sizes", "8", "--threads", "1"]


@pytest.fixture(autouse=True, scope="module")
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def python_m_tune(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TUNE_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "tune", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def one_error_line(capsys: pytest.CaptureFixture, rc: int) -> str:
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if not ln.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_help_lists_commands(tmp_path: Path) -> None:
    r = python_m_tune("--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for cmd in ("demo-data", "train", "search", "leaderboard"):
        assert cmd in r.stdout


def test_train_help(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--data", "--arch", "--unfrozen-blocks", "--weights", "--skip-bad-images", "--out", "--monitor",
                "--backbone-lr-mult", "--optimizer", "--schedule", "--warmup-epochs", "--label-smoothing", "--augment",
                "--aug-strength", "--aug-views", "--no-hflip", "--input", "--resize"):
        assert opt in out


@pytest.mark.parametrize(("args", "line"), [
    (["--augment", "blur,sharpen"], "error: unknown augmentation 'sharpen' in augment='blur,sharpen': expected a "
                                    "comma-separated list of crop, jitter, blur, jpeg, cnndetection (or all, or none)"),
    (["--input", "rgb+fft"], "error: unknown input 'fft' in input='rgb+fft': expected one of rgb, npr, highpass, dwt, "
                             "or a stack of them joined by + (e.g. rgb+npr)"),
    (["--backbone-lr-mult", "0"], "error: bad training option: backbone_lr_mult must be > 0 (got 0.0); freeze units "
                                  "with unfrozen_blocks instead"),
    (["--aug-views", "-1"], "error: bad training option: aug_views must be >= 0 (got -1; 0 = a fresh view every "
                            "epoch)"),
])
def test_bad_training_options_are_one_line(args: list[str], line: str, tmp_path: Path) -> None:
    r = python_m_tune("train", "--data", str(tmp_path / "nowhere"), *args, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == line, r.stderr


def test_tiny_train_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = make_dataset(tmp_path / "data", n=4, size=32, splits=("train", "valid"))
    out = tmp_path / "run"
    rc = main(["train", "--data", str(data), "--epochs", "2", "--out", str(out), *FAST])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert {p.name for p in out.iterdir()} == {"best.pth", "history.csv", "record.json"}
    assert len((out / "history.csv").read_text().splitlines()) == 3
    record = json.loads((out / "record.json").read_text())
    assert record["config"]["arch"] == "custom_cnn" and record["config"]["image_size"] == 32
    assert record["data"]["root"] == str(data.absolute()) and record["data"]["n_train"] == 8
    assert len(record["data"]["train_fingerprint"]) == 20
    assert "8 train / 8 valid images at 32px" in captured.out
    assert f"wrote {out}/best.pth" in captured.out
    assert (tmp_path / "cache" / "decoded").is_dir()  # TUNE_CACHE_DIR (conftest) holds the decoded images


def test_train_pretrained_offline_is_refused_not_random(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    data = make_dataset(tmp_path / "data", n=4, size=32, splits=("train", "valid"))
    line = one_error_line(capsys, main(["train", "--data", str(data), "--arch", "mobilenet_v2", "--epochs", "1",
                                        "--out", str(tmp_path / "run"), "--image-size", "32"]))
    assert "mobilenet_v2" in line and str(tmp_path / "torch") in line and "file:PATH" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("make,what,where", LAYOUT_ERRORS, ids=[m.__name__[1:] for m, _, _ in LAYOUT_ERRORS])
def test_layout_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture, make, what: str, where: str) -> None:
    root = make(tmp_path / "d")
    line = one_error_line(capsys, main(["train", "--data", str(root), "--epochs", "1", *FAST]))
    assert what in line and where in line and str(tmp_path / "d") in line


def test_bad_images_exit_2_then_skip(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = layout(tmp_path / "d", n=3)
    layout(root, "valid", n=2)
    bad = add_bad_images(root)
    line = one_error_line(capsys, main(["train", "--data", str(root), "--epochs", "1", *FAST]))
    assert line.startswith(f"error: {len(bad)} bad image(s) in split 'train'")
    assert all(str(p) in line for p in bad)
    rc = main(["train", "--data", str(root), "--epochs", "1", "--skip-bad-images", "--out", str(tmp_path / "r"),
               *FAST])
    out = capsys.readouterr().out
    assert rc == 0
    assert f"skipped {len(bad)} bad image(s) in train" in out
    record = json.loads((tmp_path / "r" / "record.json").read_text())
    assert sorted(record["data"]["skipped"]) == sorted(map(str, bad)) and record["data"]["n_train"] == 6


def test_option_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = make_dataset(tmp_path / "data", n=2, size=32, splits=("train", "valid"))
    evil = tmp_path / "evil.pth"
    torch.save({"x": object()}, evil)
    cases = [
        (["--arch", "resnet"], "unknown architecture 'resnet'; valid: custom_cnn, mobilenet_v2"),
        (["--lr", "0"], "lr must be > 0"),
        (["--head-sizes", "big"], "bad head_sizes 'big'"),
        (["--conv-blocks", "6"], "custom_cnn needs image_size >= 64"),  # 32 px halved 6 times
        (["--arch", "mobilenet_v2", "--weights", "none", "--unfrozen-blocks", "20"], "unfrozen_blocks=20"),
        (["--arch", "mobilenet_v2", "--weights", str(evil)], f"refused to load {evil}"),
        (["--arch", "mobilenet_v2", "--weights", str(tmp_path / "nope.pth")], "weights file not found"),
        (["--arch", "efficientnet_lite0", "--conv-blocks", "2"],
         "unknown training option(s) ['conv_blocks'] for efficientnet_lite0"),
        (["--arch", "efficientnet_lite0", "--weights", "hubb"], "bad weights 'hubb'"),
    ]
    for args, want in cases:
        fast = FAST_PRETRAINED if args[:2] in (["--arch", "mobilenet_v2"], ["--arch", "efficientnet_lite0"]) else FAST
        if "--conv-blocks" in args:
            fast = FAST_PRETRAINED
        line = one_error_line(capsys, main(["train", "--data", str(root), "--epochs", "1", *fast, *args]))
        assert want in line, (args, line)


def test_error_in_a_real_process(tmp_path: Path) -> None:
    r = python_m_tune("train", "--data", str(tmp_path / "missing"), cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert r.stderr.startswith(f"error: data folder not found: {tmp_path / 'missing'}")
    assert "Traceback" not in r.stderr and r.stdout == ""
