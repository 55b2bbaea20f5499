"""A finalize retraining's own allocations are a few batches, never a split: its memory stays flat in the number
of images (issue 36, item 6; benchmarks/scale.py measures the whole command).

test_mapped.py checks that a job receives the decoded splits as a path and maps them. This checks what the job
does with them: training, scoring valid every epoch, and saving the valid and test predictions (plain and
flipped) must read them a batch at a time. Counted with tracemalloc, which sees every numpy array (each batch's
uint8 copy out of the map is one): exact bytes, so the bound holds on a loaded machine, unlike a process's RSS,
which glibc's high-water mark and other work move by tens of MB.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import make_dataset

from tune.data.images import ImageSet, load_split
from tune.data.mapped import MappedImages
from tune.evaluation.ensembles import save_scores
from tune.training.config import TrainConfig
from tune.training.loop import fit

SIZE = 32  # 3 KB an image: the custom CNN trains the 2,000 images below in seconds


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> ImageSet:
    tmp = tmp_path_factory.mktemp("flat")
    root = make_dataset(tmp / "data", n=1000, size=SIZE, splits=("train",))
    return load_split(root, "train", SIZE, cache_dir=tmp / "cache")


def traced_peak(work: Any) -> int:
    """The most bytes numpy (and Python) held at once while `work` ran, beyond what they held before."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        work()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_a_retraining_holds_batches_not_the_split(split: ImageSet, tmp_path: Path) -> None:
    assert isinstance(split.x, MappedImages) and len(split) == 2000
    split_bytes = split.x.nbytes  # 6.1 MB; train, valid and test are each this split here
    cfg = TrainConfig.from_dict({"arch": "custom_cnn", "image_size": SIZE, "epochs": 1, "batch_size": 32,
                                 "threads": 1, "seed": 0})

    def retrain(data: ImageSet, out: Path) -> None:  # what retrain_seed does with the data: fit, then score
        result = fit(cfg, data, data, log=None)
        save_scores(out, result.model, data, data)

    # First on a few images: the first call's imports and one-time setup hold tens of MB, whatever the data
    few = ImageSet("train", np.asarray(split.x[:64]).copy(), split.y[:64], split.paths[:64], split.fingerprint)
    retrain(few, tmp_path / "warm")
    peak = traced_peak(lambda: retrain(split, tmp_path / "all"))
    # The largest batch is valid's 256 images (0.8 MB, 13% of the split); a copy of any split would be 100%.
    assert peak < 0.4 * split_bytes, f"{peak / 1e6:.1f} MB held at once, the split is {split_bytes / 1e6:.1f} MB"
    # the control: the same count sees a whole copy
    assert traced_peak(lambda: np.asarray(split.x).copy()) > 0.9 * split_bytes
