"""The frozen-backbone cache: built once, reused by every later run and trial, rebuilt whenever
its output could change (data, image size, weights, unfrozen depth)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_dataset
from PIL import Image

from tune.config import TrainConfig
from tune.data import load_split
from tune.train import fit


@pytest.fixture
def passes(backbone_passes):
    def count(cfg: TrainConfig, root: Path, cache_dir: Path) -> int:
        train = load_split(root, "train", cfg.image_size)
        valid = load_split(root, "valid", cfg.image_size)
        backbone_passes.clear()
        fit(cfg, train, valid, cache_dir=cache_dir, log=None)
        return len(backbone_passes.full)
    return count


def test_cache_is_invalidated_exactly_when_its_output_could_change(tmp_path: Path, passes) -> None:
    torch.set_num_threads(1)
    root = make_dataset(tmp_path / "data", n=6, size=32, splits=("train", "valid"))
    c = tmp_path / "features"
    cfg = TrainConfig.of(arch="mobilenet_v2", weights="none", epochs=1, image_size=32, unfrozen_blocks=1, batch_size=8)
    assert passes(cfg, root, c) == 3  # valid, train, flipped train
    assert passes(cfg, root, c) == 0  # reused
    assert passes(cfg.replace(lr=1e-3, head_sizes=(8,)), root, c) == 0  # trainable part only: still valid
    assert passes(cfg.replace(unfrozen_blocks=2), root, c) == 3  # another depth
    assert passes(cfg.replace(image_size=48), root, c) == 3  # another size
    assert passes(cfg.replace(seed=1), root, c) == 3  # random weights differ with the seed
    weights = tmp_path / "w.pth"
    torch.manual_seed(5)
    from torchvision.models import mobilenet_v2

    torch.save(mobilenet_v2(weights=None).state_dict(), weights)
    assert passes(cfg.replace(weights=str(weights)), root, c) == 3  # other weights
    assert passes(cfg.replace(hflip=False), root, c) == 0  # no flips: the unflipped files suffice
    img = root / "train" / "Fake" / "fake_0.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
    assert passes(cfg, root, c) == 2  # train changed (plain + flipped); valid reused


def test_cache_is_shared_by_the_search_trials(tiny_run: Path) -> None:
    """The search built the features of every depth its space allows (0..2) once, before the trials, and
    the trials used those files: no trial added one."""
    depths = set()
    for params in (tiny_run / "trials" / "mobilenet_v2").glob("*/params.json"):
        depths.add(json.loads(params.read_text())["unfrozen_blocks"])
    assert depths <= {0, 1, 2}
    files = list((tiny_run.parent.parent / "cache" / "features").glob("features-*.npy"))
    assert len(files) == 3 * 3, (depths, [f.name for f in files])


@pytest.mark.parametrize("prob", ["blur_prob", "jpeg_prob"])
def test_random_augmentation_falls_back_to_live_and_says_so(tmp_path: Path, prob: str, passes) -> None:
    root = make_dataset(tmp_path / "data", n=4, size=32, splits=("train", "valid"))
    cfg = TrainConfig.of(arch="mobilenet_v2", weights="none", epochs=1, image_size=32, batch_size=8, **{prob: 0.5})
    assert passes(cfg, root, tmp_path / "f") == 1  # only valid is cached
    train, valid = load_split(root, "train", 32), load_split(root, "valid", 32)
    assert "train live" in fit(cfg, train, valid, cache_dir=tmp_path / "f", log=None).cache_mode
