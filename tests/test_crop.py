"""resize: crop: training batches are random windows of the images at native resolution (never a resampled pixel),
valid, test and serving see the centre crop, and a crop larger than the images is one line naming the smallest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tune.core import UserError
from tune.data.images import load_split, scan_split
from tune.training.cache import Inputs, stored
from tune.training.config import TrainConfig
from tune.training.loop import fit, make_model

NATIVE, SIZE = 72, 32  # a model needs >= 32 px


def dataset(root: Path, sides: dict[str, int] | None = None) -> Path:
    """Noise images (every pixel tells where it is) of NATIVE px, or of the sides given by file name."""
    rng = np.random.default_rng(0)
    for split in ("train", "valid"):
        for cls in ("Fake", "Real"):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(4):
                name = f"{cls.lower()}_{i}.png"
                w = h = (sides or {}).get(name, NATIVE)
                Image.fromarray(rng.integers(0, 256, (h, w + 3 * i, 3), dtype=np.uint8)).save(d / name)
    return root


def windows(img: np.ndarray, side: int) -> dict[bytes, tuple[int, int]]:
    """Every side x side window of a (3, H, W) image at native resolution, by its bytes."""
    return {img[:, t:t + side, x:x + side].tobytes(): (t, x) for t in range(img.shape[1] - side + 1)
            for x in range(img.shape[2] - side + 1)}


def native(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1)


def test_crop_mode_never_resamples_a_training_pixel(tmp_path: Path) -> None:
    root = dataset(tmp_path / "data")
    cfg = TrainConfig.of(arch="custom_cnn", image_size=SIZE, resize="crop", aug_views=0, hflip=False, epochs=1,
                         conv_blocks=2, base_width=4, head_sizes=(8,), augment="jitter", aug_strength=0.0)
    train, valid = (load_split(root, s, SIZE, resize="crop") for s in ("train", "valid"))
    assert train.x.shape[-1] == 2 * SIZE and valid.x.shape[-1] == SIZE  # train: the centre 64 px, cut per view
    inputs = Inputs(make_model(cfg), cfg, train, valid, None)
    seen: set[tuple[int, int, int]] = set()
    every = [windows(native(p), SIZE) for p in train.paths]
    for epoch in (1, 2, 3):
        inputs.start_epoch(epoch)  # aug_views 0: a fresh window every epoch
        idx = np.arange(len(train))
        batch = inputs.train_batch(idx, torch.zeros(len(idx), dtype=torch.bool))
        assert batch.shape == (len(idx), 3, SIZE, SIZE)
        pixels = np.rint(batch.numpy() * 255).astype(np.uint8)
        for i, x in zip(idx, pixels):
            where = every[i].get(x.tobytes())
            assert where is not None, f"image {i}, epoch {epoch}: not a window of the native pixels"
            seen.add((int(i), *where))
    assert len(seen) > len(train) * 2  # the windows move from epoch to epoch
    for path, x in zip(valid.paths, valid.x):  # valid: the centre crop
        img = native(path)
        t, left = (img.shape[1] - SIZE) // 2, (img.shape[2] - SIZE) // 2
        assert np.array_equal(x, img[:, t:t + SIZE, left:left + SIZE])


def test_crop_mode_trains_and_caches_its_views(tmp_path: Path) -> None:
    """End to end through fit, with a frozen prefix: the cached views are windows too (keyed apart from
    bilinear's), and resize bilinear's images are refused for a resize crop config."""
    torch.set_num_threads(1)
    root = dataset(tmp_path / "data")
    cfg = TrainConfig.of(arch="mobilenet_v2", weights="none", unfrozen_blocks=1, image_size=32, resize="crop",
                         aug_views=2, epochs=2, batch_size=4, head_sizes=(8,), hflip=False)
    train, valid = (load_split(root, s, 32, resize="crop") for s in ("train", "valid"))
    result = fit(cfg, train, valid, cache_dir=tmp_path / "features", log=None)
    assert len(result.history) == 2
    names = sorted(p.name for p in (tmp_path / "features").glob("features-*.npy"))
    assert any("-native-" in n and "crop32-none" in n for n in names), names
    z, _ = stored(result.model, train, flips=(False,), cache_dir=tmp_path / "features", spec=cfg.aug, view=1)
    assert z is not None and z[0].shape[0] == len(train)
    with pytest.raises(UserError, match="prepared for resize bilinear"):
        fit(cfg, load_split(root, "train", 32), valid, log=None)


def test_a_crop_larger_than_the_images_is_one_line_naming_the_smallest(tmp_path: Path) -> None:
    root = dataset(tmp_path / "data", {"real_2.png": 20, "fake_1.png": 28})
    with pytest.raises(UserError) as e:
        load_split(root, "train", SIZE, resize="crop")
    msg = str(e.value)
    assert "\n" not in msg and "real_2.png (20 px on its shorter side)" in msg and f"{SIZE} px crops" in msg
    assert len(load_split(root, "train", SIZE)) == 8  # bilinear resizes them all


def test_serving_decodes_the_centre_crop(tmp_path: Path) -> None:
    from tune import inference
    from tune.core import atomic_torch_save, atomic_write_json, file_sha256

    root = dataset(tmp_path / "data")
    cfg = TrainConfig.of(arch="custom_cnn", image_size=SIZE, resize="crop", input="npr", conv_blocks=2, base_width=4)
    path = tmp_path / "model" / "best.pth"
    atomic_torch_save(path, make_model(cfg).state_dict())
    atomic_write_json(path.parent / "record.json", {"config": cfg.to_dict(), "threshold": 0.5, "seed": 0,
                                                    "weights_sha256": file_sha256(path), "data": {}})
    loaded = inference.load(path)
    f = scan_split(root, "valid").paths[3]  # 81 x 72
    img = native(str(f))
    assert img.shape == (3, 72, 81) and np.array_equal(loaded.decode(f), img[:, 20:52, 24:56])
    assert np.array_equal(loaded.decode(f.read_bytes()), loaded.decode(f))
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((10, 30, 3), np.uint8)).save(small)
    with pytest.raises(ValueError, match="smaller than the 32 px crop"):
        loaded.decode(small)


def test_a_search_prepares_crop_images_only_when_a_trial_can_be_crop(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from tune.search.driver import SearchOptions, crop_sets
    from tune.search.space import parse_space, resize_modes

    root = dataset(tmp_path / "data")
    plain = parse_space({"image_size": SIZE, "architectures": {"custom_cnn": {}}})
    either = parse_space({"image_size": SIZE, "architectures": {"custom_cnn": {}, "mobilenet_v2": {
        "weights": "none", "resize": {"type": "categorical", "choices": ["bilinear", "crop"]}}}})
    assert resize_modes(plain) == {"bilinear"} and resize_modes(either) == {"bilinear", "crop"}
    opts = SearchOptions(None, root, "x", tmp_path / "results", cache_dir=tmp_path / "cache")
    record = SimpleNamespace(data=SimpleNamespace(valid_extra=None))
    assert crop_sets(opts, plain, record, root) is None
    train, valid, extra = crop_sets(opts, either, record, root)
    assert (train.resize, valid.resize, extra) == ("crop", "crop", []) and train.x.shape[-1] == 2 * SIZE
    assert any("crop64" in p.name for p in (tmp_path / "cache" / "decoded").iterdir())  # keyed apart


CROP_SPACE = """
metric: val_auc
seed: 0
image_size: 32
budget: {trials: 2, max_epochs: 2, grace_period: 2, reduction_factor: 2, patience: 3}
resources: {cpus_per_trial: 1}
fixed: {batch_size: 8, resize: crop}
architectures:
  custom_cnn:
    lr: {type: loguniform, low: 1.0e-3, high: 1.0e-2}
    conv_blocks: {type: int, low: 1, high: 2}
"""


def test_a_crop_search_runs_through_ray_then_finalizes_and_predicts(ray_session, tmp_path: Path) -> None:
    """End to end: trials on Ray train on native-resolution windows, finalize retrains and tests on centre crops,
    and the exported model's record says crop, so predict prepares images the same way."""
    import json

    from conftest import make_dataset, run_tiny_search

    from tune import inference
    from tune.cli import main
    from tune.runs.leaderboard import load_leaderboard

    data = make_dataset(tmp_path / "data", n=8, size=64)  # 64 px images, 32 px windows
    run = run_tiny_search(tmp_path, name="crop", space=CROP_SPACE, data=data)
    board = load_leaderboard(run)
    assert len(board) == 2 and (board["ended"] == "completed").all() and board["score"].notna().all()
    assert main(["finalize", str(run), "--seeds", "1"]) == 0
    record = json.loads((run / "models" / "custom_cnn.json").read_text())
    assert record["config"]["resize"] == "crop"
    loaded = inference.load(run / "models" / "custom_cnn.pth")
    test = load_split(data, "test", 32, resize="crop")
    files = scan_split(data, "test").paths[:4]
    direct = loaded.probabilities(np.stack([loaded.decode(f) for f in files]))
    assert np.allclose(direct, loaded.probabilities(test.x[:4]), atol=1e-6)  # predict decodes as finalize tested
