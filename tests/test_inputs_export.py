"""A model with a non-RGB input carries its transform everywhere: ONNX export, predict and serve's scoring
give the same probabilities for the same image files."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import make_dataset

from tune import inference
from tune.core import atomic_torch_save, atomic_write_json, file_sha256
from tune.data.images import scan_split
from tune.serving import export as export_mod
from tune.serving.predict import predict
from tune.training.config import TrainConfig
from tune.training.loop import make_model

SIZE = 32


def saved(folder: Path, cfg: TrainConfig) -> Path:
    path = folder / "models" / f"{cfg.arch}.pth"
    model = make_model(cfg)
    # At init a deep net's eval-mode output is one constant; these statistics vary it. Smaller ones amplify float
    # error through the blocks: lite0 differs from its ONNX export by 1e-3 at 0.3, with input rgb too.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.fill_(0.6)
    atomic_torch_save(path, model.state_dict())
    atomic_write_json(path.with_suffix(".json"), {
        "config": cfg.to_dict(), "threshold": 0.5, "threshold_rule": "test", "seed": cfg.seed,
        "weights_source": "random init", "weights_sha256": file_sha256(path),
        "data": {"root": "/nonexistent", "train_fingerprint": "abc123"}})
    return path


def serve_scores(loaded: inference.LoadedModel, files: list[Path]) -> np.ndarray:
    """Serve's own decode and forward (tune/serving/app.py's replica), without starting Ray Serve."""
    from tune.serving.app import DetectorApp

    cls = DetectorApp.func_or_class
    replica = cls.__new__(cls)
    replica.loaded, replica.threads = loaded, 1

    async def decoded() -> list[np.ndarray]:
        return [await replica.decode(f.read_bytes()) for f in files]

    return replica.forward(np.stack(asyncio.run(decoded())))


@pytest.mark.parametrize("arch, hp, inp", [
    ("custom_cnn", {"conv_blocks": 2, "base_width": 8, "head_sizes": (16,)}, "npr"),
    ("efficientnet_lite0", {"weights": "none", "unfrozen_blocks": 2, "head_sizes": (16,)}, "rgb+npr"),
])
def test_npr_model_exports_and_scores_alike_in_predict_serve_and_onnx(tmp_path: Path, arch: str, hp: dict,
                                                                       inp: str) -> None:
    files = scan_split(make_dataset(tmp_path / "data", n=4, size=40, splits=("test",)), "test").paths
    path = saved(tmp_path, TrainConfig.of(arch=arch, image_size=SIZE, seed=1, input=inp, **hp))
    out = tmp_path / "export" / "model.onnx"
    info = export_mod.export(path, "onnx", out)
    assert info["parity"]["max_abs_diff"] <= 1e-4
    loaded = inference.load(path)
    assert "InputTransform" in repr(loaded.model)
    by_predict = np.array([r.p_fake for r in predict(loaded, files)])
    by_serve = serve_scores(loaded, files)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.stack([loaded.decode(f) for f in files]).astype(np.float32) / 255
    by_onnx = session.run(["p_fake"], {"image": x})[0]
    assert len(by_predict) == len(files) == 8
    assert np.abs(by_predict - by_serve).max() <= 1e-6
    assert np.abs(by_predict - by_onnx).max() <= 1e-4
    assert by_predict.std() > 0  # the images are told apart: the comparison is not of constants
