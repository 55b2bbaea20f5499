"""Compact trial checkpoints: no frozen prefix stored, resumed bit for bit through a saved file, a changed prefix
refused, earlier versions' checkpoints still resumed; and keep_best's one slimmed checkpoint per finished trial."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_dataset

from tune.core import UserError
from tune.data.images import ImageSet, load_split
from tune.training.checkpoint import FROZEN, finished, full_weights, kept_weights
from tune.training.config import TrainConfig
from tune.training.loop import FitResult, fit, make_model

pytestmark = pytest.mark.usefixtures("one_thread")

# A real frozen prefix: Lite0's packaged ImageNet weights, all but the last unit (the head conv) frozen, tiny images.
LITE = TrainConfig.of(arch="efficientnet_lite0", image_size=32, batch_size=8, epochs=3, patience=5, lr=3e-3,
                      unfrozen_blocks=1, weights="packaged", head_sizes=(8,), dropout=0.2)


@pytest.fixture(scope="module")
def splits(tmp_path_factory: pytest.TempPathFactory) -> tuple[ImageSet, ImageSet]:
    root = make_dataset(tmp_path_factory.mktemp("ckpt") / "data", n=8, size=32, splits=("train", "valid"))
    return load_split(root, "train", 32), load_split(root, "valid", 32)


def run(cfg: TrainConfig, splits: tuple[ImageSet, ImageSet], **kw: Any) -> FitResult:
    return fit(cfg, *splits, log=None, **kw)


def saved_at(cfg: TrainConfig, splits: tuple[ImageSet, ImageSet], epoch: int, path: Path) -> dict[str, Any]:
    """Train up to `epoch`, save that epoch's checkpoint as a trial does, and load it back."""
    def save(row: dict, state: Any) -> None:
        if row["epoch"] == epoch:
            torch.save(state(), path)

    run(cfg, splits, report=save, stop_after=epoch)
    return torch.load(path, map_location="cpu", weights_only=True)


def rows(result: FitResult) -> list[dict[str, Any]]:
    """Every per-epoch number but the wall time, NaN written as a string so that == compares it too."""
    return [{k: "nan" if isinstance(v, float) and math.isnan(v) else v for k, v in r.items() if k != "epoch_time"}
            for r in result.history]


def nbytes(obj: object) -> int:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.tell()


def weights_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_compact_checkpoint_resumes_bit_for_bit(splits, tmp_path: Path) -> None:
    full = run(LITE, splits)
    saved = saved_at(LITE, splits, 2, tmp_path / "state.pt")
    whole = make_model(LITE).state_dict()
    frozen = {k for k in whole if k.startswith(FROZEN)}
    assert frozen and not frozen & (set(saved["trained"]) | set(saved["best_trained"]))
    model = make_model(LITE)
    # the layout of earlier versions: the whole model, live and at the kept epoch
    legacy = {**{k: v for k, v in saved.items() if k not in ("trained", "best_trained", "frozen")},
              "model": full_weights(model, saved["trained"]), "best_state": full_weights(model, saved["best_trained"])}
    size = (tmp_path / "state.pt").stat().st_size  # measured: 6.8 MB; the earlier layout 18.9, the model 13.8
    assert size < 0.4 * nbytes(legacy) and size - nbytes(saved["optimizer"]) < 0.3 * nbytes(whole)

    resumed = run(LITE, splits, resume=saved)
    assert rows(resumed) == rows(full) and len(rows(full)) == 3
    assert weights_equal(resumed.model.state_dict(), full.model.state_dict())
    assert weights_equal(kept_weights(model, saved), kept_weights(model, legacy))
    # and a checkpoint of an earlier version still resumes the same run
    assert rows(run(LITE, splits, resume=legacy)) == rows(full)


def test_a_changed_frozen_prefix_is_refused_in_one_line(splits, tmp_path: Path) -> None:
    import timm

    from tune.models.lite import packaged_weights

    sd, _ = packaged_weights(0, timm.create_model("tf_efficientnet_lite0", pretrained=False), "efficientnet_lite0")
    weights = tmp_path / "lite0.pth"
    torch.save(sd, weights)
    cfg = LITE.replace(weights=f"file:{weights}")
    saved = saved_at(cfg, splits, 1, tmp_path / "state.pt")
    sd["conv_stem.weight"][0, 0, 0, 0] += 1e-3  # the stem: frozen
    torch.save(sd, weights)
    with pytest.raises(UserError) as e:
        run(cfg, splits, resume=saved)
    message = str(e.value)
    assert "\n" not in message and "frozen layers" in message and "lite0.pth" in message


def test_an_fp16_checkpoint_carries_its_loss_scaler(splits, tmp_path: Path) -> None:
    """fp16 trains with a GradScaler whose state moves as it goes (the scale, and the steps since it last
    changed): a resumed trial carries on from that state, not a fresh scaler's, so it ends where the
    uninterrupted run ends."""
    cfg = TrainConfig.of(arch="custom_cnn", image_size=32, batch_size=8, epochs=3, patience=5, lr=3e-3,
                         conv_blocks=1, base_width=4, head_sizes=(8,), precision="fp16")
    ends: list[dict[str, Any]] = []

    def last_scaler(row: dict, state: Any) -> None:
        if row["epoch"] == 3:
            ends.append(state()["scaler"])

    full = run(cfg, splits, report=last_scaler)
    saved = saved_at(cfg, splits, 2, tmp_path / "state.pt")
    assert saved["scaler"]["_growth_tracker"] > 0  # steps were counted
    resumed = run(cfg, splits, resume=saved, report=last_scaler)
    assert rows(resumed) == rows(full)
    assert ends[0] == ends[1]  # a fresh scaler would have counted only the third epoch's steps
    assert "scaler" not in finished(saved)  # only a resume needs it
