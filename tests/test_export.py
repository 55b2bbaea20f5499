"""`python -m tune export --format onnx`: parity under onnxruntime, on the written file, for every architecture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import make_dataset

import tune.cli
from tune import inference
from tune.core import atomic_torch_save, atomic_write_json, file_sha256
from tune.data.images import scan_split
from tune.metrics.classification import binary_metrics
from tune.models.registry import get_arch, list_archs
from tune.serving import export as export_mod
from tune.training.config import TrainConfig
from tune.training.loop import make_model

SIZE = 32


def saved_model(folder: Path, arch: str, *, seed: int = 0, data: Path | None = None,
                extra: dict | None = None) -> Path:
    """A freshly initialised `arch` (weights "none": nothing downloaded) saved like finalize's models/ARCH.pth."""
    small = {"weights": "none", "conv_blocks": 2, "base_width": 8, "head_sizes": (16,)}
    cfg = TrainConfig.of(arch=arch, image_size=SIZE, seed=seed,
                         **{k: v for k, v in small.items() if k in get_arch(arch).hparams})
    path = folder / "models" / f"{arch}.pth"
    atomic_torch_save(path, make_model(cfg).state_dict())
    record = {"config": cfg.to_dict(), "threshold": 0.5, "threshold_rule": "test", "seed": seed,
              "weights_source": "random init (weights=none)", "weights_sha256": file_sha256(path),
              "data": {"root": str(data) if data else "/nonexistent", "train_fingerprint": "abc123"}, **(extra or {})}
    atomic_write_json(path.with_suffix(".json"), record)
    return path


def onnx_probabilities(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "image" and inp.shape[1:] == [3, SIZE, SIZE] and not isinstance(inp.shape[0], int)
    return session.run(["p_fake"], {"image": x.astype(np.float32) / 255})[0]


@pytest.mark.parametrize("arch", list_archs())
def test_onnx_export_matches_pytorch_for_every_architecture(arch: str, tmp_path: Path) -> None:
    path = saved_model(tmp_path, arch, seed=1)
    out = tmp_path / "export" / f"{arch}.onnx"
    info = export_mod.export(path, "onnx", out)
    assert out.is_file() and info["parity"]["max_abs_diff"] <= 1e-4 and info["parity"]["images"] == "synthetic"
    # parity checked again here, on the written file, with images the exporter never saw, at two batch sizes
    rng = np.random.default_rng(7)
    x = rng.integers(0, 256, (5, 3, SIZE, SIZE), dtype=np.uint8)
    want = inference.load(path).probabilities(x)
    got = np.concatenate([onnx_probabilities(out, x[:3]), onnx_probabilities(out, x[3:])])
    assert got.shape == (5,) and np.abs(got - want).max() <= 1e-4
    card = (out.parent / "MODEL_CARD.md").read_text()
    assert f"sha256 `{info['sha256']}`" in card and arch in card


def test_export_cli_uses_validation_images_and_writes_a_model_card(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    data = make_dataset(tmp_path / "data", n=20, size=40)
    test = scan_split(data, "test")
    run = tmp_path / "run"
    # finalize's layout: models/ARCH.pth copied from finalize/NAME/seedS/ with the test predictions beside it
    src = run / "finalize" / "custom_cnn" / "seed0"
    model = saved_model(src.parent.parent.parent, "custom_cnn", data=data)
    src.mkdir(parents=True)
    (src / "best.pth").write_bytes(model.read_bytes())
    loaded = inference.load(model)
    y = np.array(test.labels)
    p = loaded.probabilities(np.stack([loaded.decode(f) for f in test.paths]))
    (src / "predictions.csv").write_text("path,label,p_fake\n" + "".join(
        f"{f},{t},{float(q)!r}\n" for f, t, q in zip(test.paths, y, p)))
    evaluation = {"models": [{"name": "custom_cnn", "sha256": loaded.sha256}],
                  "sources": [{"name": "gen_a", "n_fake": 20, "n_real": 20, "fingerprint": "f00"}],
                  "conditions": [{"name": "clean"}, {"name": "jpeg=75"}],
                  "rows": [{"model": "custom_cnn", "source": "gen_a", "condition": c,
                            "auc": {"value": 0.61, "low": 0.5, "high": 0.7}} for c in ("clean", "jpeg=75")]}
    (run / "run.json").write_text(json.dumps({"name": "run"}))  # what makes a folder a run folder
    (run / "extra-test").mkdir()
    (run / "extra-test" / "evaluation.json").write_text(json.dumps(evaluation))  # as finalize --extra-test
    record = json.loads(model.with_suffix(".json").read_text())
    record.update(run="run", trial_id="abc_00001", source=str(src),
                  test_metrics={"at_0.5": binary_metrics(y, p, 0.5), "at_valid_threshold": binary_metrics(y, p, 0.5)})
    model.with_suffix(".json").write_text(json.dumps(record))

    assert tune.cli.main(["export", "--model", str(model), "--format", "onnx"]) == 0
    out = model.parent / "custom_cnn-onnx" / "model.onnx"
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"wrote {out}") and "32 validation images" in line and "P(fake)" in line
    card = (out.parent / "MODEL_CARD.md").read_text()
    for section in ("## Model details", "## Intended use", "## Training data", "## Metrics", "## Limitations",
                    "## How to reproduce"):
        assert section in card
    assert "train fingerprint: `abc123`" in card and "95% percentile bootstrap" in card
    assert "gen_a (20 fake / 20 real)" in card and "jpeg=75" in card
    assert "python -m tune reproduce run --trial abc_00001" in card
    header = next(line for line in card.splitlines() if line.startswith("| Threshold |")).split("|")
    row = next(line for line in card.splitlines() if line.startswith("| threshold 0.5 |")).split("|")
    auc_cell = row[header.index(" ROC-AUC ")]
    assert "[" in auc_cell  # the value with its interval


def test_export_refuses_to_write_when_parity_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = saved_model(tmp_path, "custom_cnn", seed=1)
    other = inference.load(saved_model(tmp_path / "other", "custom_cnn", seed=2))
    real_to_onnx = export_mod.to_onnx
    monkeypatch.setattr(export_mod, "to_onnx", lambda loaded: real_to_onnx(other))  # a different network's graph
    out = tmp_path / "export" / "m.onnx"
    assert tune.cli.main(["export", "--model", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ONNX parity failed") and "nothing written" in err and "\n" not in err
    assert not out.parent.exists() or list(out.parent.iterdir()) == []  # no file, no card, no temporary


def test_export_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert tune.cli.main(["export", "--model", str(tmp_path / "missing.pth")]) == 2
    assert capsys.readouterr().err.startswith("error: model file not found")


@pytest.mark.parametrize(("arch", "scheme"), [("custom_cnn", "int8"), ("efficientnet_lite0", "int8"),
                                             ("custom_cnn", "int8-dynamic")])  # the demo's (each costs two
def test_int8_export_agrees_with_fp32_within_the_stated_tolerance(arch: str, scheme: str, tmp_path: Path) -> None:
    # exports: up to a minute on two loaded cores)
    from tune.serving.quantize import INT8_LIMIT

    data = make_dataset(tmp_path / "data", n=40, size=SIZE)  # static int8 calibrates on its valid split
    path = saved_model(tmp_path, arch, seed=1, data=data)
    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    export_mod.export(path, "onnx", fp32)
    info = export_mod.export(path, "onnx", int8, quantize=scheme)
    q = info["quantized"]
    assert q["name"] == scheme and q["max_abs_diff"] <= INT8_LIMIT == q["limit"] and q["ms_per_image_int8"] > 0
    assert q["bytes_int8"] < q["bytes_fp32"]
    assert ("calibrated on" in q["scheme"]) == (scheme == "int8")
    # checked again here on the written files, with a fixed image set the exporter never saw
    x = np.random.default_rng(3).integers(0, 256, (8, 3, SIZE, SIZE), dtype=np.uint8)
    assert np.abs(onnx_probabilities(int8, x) - onnx_probabilities(fp32, x)).max() <= INT8_LIMIT
    card = (int8.parent / "MODEL_CARD.md").read_text()
    assert f"Quantized: int8 {'static' if scheme == 'int8' else 'dynamic'}" in card
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert ("QuantizeLinear" in ops) == (scheme == "int8")  # static: QDQ around every quantized op


def test_static_int8_without_its_validation_images_is_one_line(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = saved_model(tmp_path, "custom_cnn")  # its record's data root does not exist here
    out = tmp_path / "x" / "model.onnx"
    assert tune.cli.main(["export", "--model", str(path), "--quantize", "int8", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "calibrates on the model's validation images" in err[0] and "int8-dynamic" in err[0]
    assert not out.exists()


def test_int8_that_cannot_be_quantized_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import onnxruntime.quantization as q

    def refuse(*_a, **_k):
        raise NotImplementedError("no int8 kernel for this graph\nmore detail")

    monkeypatch.setattr(q, "quantize_dynamic", refuse)
    path = saved_model(tmp_path, "custom_cnn")
    out = tmp_path / "x" / "model.onnx"
    assert tune.cli.main(["export", "--model", str(path), "--quantize", "int8-dynamic", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "custom_cnn cannot be quantized" in err[0] and not out.exists()
