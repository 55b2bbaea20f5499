"""Shared fixtures. Nothing here touches the network: datasets and weights are made by the tests."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TUNE_OFFLINE", "1")
# The suite never sees this machine's torch cache: a weights file someone downloaded there (MobileNetV2's
# ImageNet weights, say) would change what the tests of missing weights see. Set before any Ray worker or
# server subprocess starts, so they inherit it; removed when the session ends.
os.environ["TORCH_HOME"] = tempfile.mkdtemp(prefix="tune-tests-torch-")
atexit.register(shutil.rmtree, os.environ["TORCH_HOME"], True)
# What a command sets as it starts (tune.cli.main): the Ray workers and jobs the tests start themselves, outside
# a command, get the allocator a command's would. Imported here, after the settings above: tune.cli imports
# every command's module.
from tune.cli.common import allocator_environment  # noqa: E402

allocator_environment()


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


class BackbonePasses:
    """Counts the frozen-prefix work done through tune.training.cache: full passes over a split's images, and
    longer prefixes derived from a stored shorter one (only the units in between run)."""

    def __init__(self, mp: pytest.MonkeyPatch) -> None:
        from tune.training import cache

        self.full: list[int] = []
        self.derived: list[int] = []
        encode_all, run_units = cache.encode_all, cache.run_units

        def counting_encode_all(model, x, *, flip=False, out=None):
            self.full.append(len(x))
            return encode_all(model, x, flip=flip, out=out)

        def counting_run_units(model, x, start, *, flip=False, out=None):
            if start:
                self.derived.append(start)
            return run_units(model, x, start, flip=flip, out=out)

        mp.setattr(cache, "encode_all", counting_encode_all)
        mp.setattr(cache, "run_units", counting_run_units)

    def clear(self) -> None:
        self.full.clear()
        self.derived.clear()


@pytest.fixture
def backbone_passes(monkeypatch: pytest.MonkeyPatch) -> BackbonePasses:
    return BackbonePasses(monkeypatch)


@pytest.fixture(scope="module")
def one_thread():
    """Two shared cores: one torch thread is several times faster than two contending ones."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "data")


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("TUNE_CACHE_DIR", str(d))
    return d


TINY_SPACE = """
metric: val_auc
mode: max
seed: 0
image_size: 32
budget: {trials: 2, max_epochs: 2, grace_period: 1, reduction_factor: 2, patience: 3}
resources: {cpus_per_trial: 1}
fixed: {batch_size: 16}
architectures:
  custom_cnn:
    lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}
    conv_blocks: {type: int, low: 1, high: 2}
    base_width: {type: categorical, choices: [4, 8]}
    head_sizes: {type: categorical, choices: [[8], [16, 8]]}
  mobilenet_v2:
    weights: none
    lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}
    unfrozen_blocks: {type: int, low: 0, high: 2}
    head_sizes: {type: categorical, choices: [[8], [16]]}
"""


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (starting one costs seconds on 2 cores)."""
    import ray

    from tune.search.cluster import loopback_only, quiet_ray

    quiet_ray()
    loopback_only()
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def run_tiny_search(tmp: Path, *, name: str = "tiny", space: str = TINY_SPACE, data: Path | None = None,
                    trials: int | None = None, **kw: object) -> Path:
    from tune.search.driver import SearchOptions, run_search

    data = data or make_dataset(tmp / "data", n=10, size=32)
    space_file = tmp / f"{name}.yaml"
    space_file.write_text(space)
    opts = SearchOptions(space=space_file, data=data, name=name, results=tmp / "results", trials=trials,
                         cache_dir=tmp / "cache", **kw)
    return run_search(opts)


@pytest.fixture(scope="session")
def tiny_run(ray_session, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny search (2 trials per architecture, 2 epochs, 32 px), shared read-only by tests."""
    return run_tiny_search(tmp_path_factory.mktemp("tiny_run"))
