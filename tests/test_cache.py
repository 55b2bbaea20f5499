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

from tune.data.images import load_split
from tune.training.config import TrainConfig
from tune.training.loop import fit


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
    """The trials built the features they used, lazily, once per depth (valid, train, flipped train), and
    shared them: nothing was built for a depth no trial used (before, the search built all of 0..2 first)."""
    depths = set()
    for params in (tiny_run / "trials" / "search").glob("mobilenet_v2_*/params.json"):
        depths.add(json.loads(params.read_text())["unfrozen_blocks"])
    assert depths <= {0, 1, 2}
    files = list((tiny_run.parent.parent / "cache" / "features").glob("features-*.npy"))
    assert len(files) == 3 * len(depths), (depths, [f.name for f in files])
    assert {json.loads(f.with_suffix(".json").read_text())["arch"] for f in files} == {"mobilenet_v2"}


def test_a_view_cache_is_keyed_by_its_augmentation_settings(tmp_path: Path, passes) -> None:
    """Views are built when an epoch first needs one, and rebuilt exactly when their pixels could change."""
    root = make_dataset(tmp_path / "data", n=4, size=32, splits=("train", "valid"))
    c = tmp_path / "f"
    # packaged weights: the same backbone whatever the seed, so only the seed's own effect on views shows
    cfg = TrainConfig.of(arch="efficientnet_lite0", epochs=2, image_size=32, unfrozen_blocks=3, batch_size=8,
                         augment="blur,jpeg", aug_views=8)
    assert passes(cfg, root, c) == 1 + 2 * 2  # valid; views 0 and 1 (plain and flipped): 2 epochs need 2 views
    assert passes(cfg, root, c) == 0
    assert passes(cfg.replace(aug_views=2), root, c) == 0  # view v is view v, whatever V
    assert passes(cfg.replace(epochs=3), root, c) == 2  # view 2, when an epoch first needs it
    assert passes(cfg.replace(aug_strength=0.5), root, c) == 4  # another strength: new views, valid reused
    assert passes(cfg.replace(augment="blur"), root, c) == 4  # other augmentations
    assert passes(cfg.replace(seed=1), root, c) == 4  # another seed draws other views
    assert passes(cfg.replace(hflip=False, epochs=3), root, c) == 0  # the unflipped files suffice
    assert passes(cfg.replace(augment="none"), root, c) == 2  # plain images: one source for every epoch
    assert passes(cfg.replace(augment="none", aug_views=4), root, c) == 0  # no augmentation: views are moot


def test_fresh_views_train_live(tmp_path: Path, passes) -> None:
    root = make_dataset(tmp_path / "data", n=4, size=32, splits=("train", "valid"))
    cfg = TrainConfig.of(arch="mobilenet_v2", weights="none", epochs=1, image_size=32, batch_size=8,
                         augment="all", aug_views=0)
    assert passes(cfg, root, tmp_path / "f") == 1  # only valid is cached
