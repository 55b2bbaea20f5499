"""Shared fixtures. Nothing here touches the network: datasets and weights are made by the tests."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TUNE_OFFLINE", "1")


def make_dataset(root: Path, n: int = 12, size: int = 40, seed: int = 0,
                 splits: tuple[str, ...] = ("train", "valid", "test")) -> Path:
    """A small learnable dataset: 'Fake' images carry a faint checkerboard (an up-sampling trace)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    checker = (((yy + xx) % 2) * 2 - 1)[..., None] * 18
    for split in splits:
        for cls in ("Fake", "Real"):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = rng.normal(128, 40, (1, 1, 3)) + rng.normal(0, 25, (size, size, 3))
                img = base + (checker if cls == "Fake" else 0)
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"{cls.lower()}_{i}.png")
    return root


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "data")


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("TUNE_CACHE_DIR", str(d))
    return d
