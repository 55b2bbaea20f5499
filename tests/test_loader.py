"""The prefetching loader gives the batches the inline loop gave (same seed: same tensors, bit for bit, with
any number of workers), and mixed precision resolves and runs as the config says."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_dataset

import tune.training.cache as cache
import tune.training.loop as loop
from tune.data.augment import DRAWS, augment_images, augment_tensor, draws
from tune.data.images import ImageSet, as_tensor, load_split, to_float
from tune.training import precision
from tune.training.config import TrainConfig
from tune.training.loader import loader_workers, prefetched

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def splits(tmp_path_factory: pytest.TempPathFactory) -> tuple[ImageSet, ImageSet]:
    root = make_dataset(tmp_path_factory.mktemp("loader") / "data", n=9, size=32, splits=("train", "valid"))
    return load_split(root, "train", 32), load_split(root, "valid", 32)


MOBILE = TrainConfig.of(arch="mobilenet_v2", weights="none", unfrozen_blocks=1, image_size=32, batch_size=5,
                        epochs=3, lr=3e-3, head_sizes=(8,), dropout=0.2)


def inline_batches(inputs: cache.Inputs, cfg: TrainConfig, n: int, epoch: int) -> list[torch.Tensor]:
    """The batches as the training loop made them before the loader (its code, kept here as the reference)."""
    gen = torch.Generator().manual_seed(loop.epoch_seed(cfg.seed, epoch))
    order = torch.randperm(n, generator=gen).numpy()
    out = []
    for i in range(0, len(order), cfg.batch_size):
        idx = np.sort(order[i:i + cfg.batch_size])
        flip = loop.draw_flips(len(idx), cfg.hflip, gen)
        if not inputs.train_z:
            x = as_tensor(augment_images(inputs.train.x, idx, inputs.spec, inputs.view))
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            out.append(inputs.model.encode(to_float(x).contiguous(memory_format=torch.channels_last)))
        else:
            z = np.array(inputs.train_z[0][idx], dtype=np.float32)
            if len(inputs.train_z) > 1 and bool(flip.any()):
                z[flip.numpy()] = inputs.train_z[1][idx[flip.numpy()]]
            out.append(torch.from_numpy(z))
    return out


@pytest.mark.parametrize("augment", ["none", "crop,jitter,blur,jpeg"])
@pytest.mark.parametrize("use_cache", [False, True])
def test_loader_batches_equal_the_inline_loops(splits, tmp_path: Path, augment: str, use_cache: bool) -> None:
    cfg = MOBILE.replace(augment=augment, aug_views=2, use_cache=use_cache)
    model = loop.make_model(cfg)
    for workers in (0, 1, 3):
        inputs = cache.Inputs(model, cfg.replace(workers=workers), *splits, cache_dir=tmp_path / "features")
        assert inputs.workers == workers and bool(inputs.train_z or inputs.train_cached) == use_cache
        for epoch in (1, 2):
            inputs.start_epoch(epoch)
            want = inline_batches(inputs, cfg, len(splits[0]), epoch)
            plan = loop.batch_plan(cfg, len(splits[0]), epoch)
            jobs = [functools.partial(inputs.train_host, idx, flip) for idx, flip in plan]
            got = [inputs.on_device(b) for b in prefetched(jobs, workers)]
            assert len(got) == len(want) == 4
            assert all(torch.equal(a, b) for a, b in zip(got, want)), (workers, epoch)
        valid = list(inputs.valid_batches(4))
        assert len(valid) == 5 and torch.equal(torch.cat(valid), torch.cat(list(
            cache.Inputs(model, cfg.replace(workers=0), *splits, cache_dir=tmp_path / "features").valid_batches(7))))


@pytest.mark.parametrize("augment", ["none", "crop,jitter"])
def test_fit_numbers_do_not_depend_on_the_workers(splits, augment: str) -> None:
    cfg = MOBILE.replace(augment=augment, aug_views=0, use_cache=False, epochs=2)
    runs = [loop.fit(cfg.replace(workers=w), *splits, log=None) for w in (0, 1, 3)]
    rows = [[(r["train_loss"], r["val_loss"], r["val_auc"]) for r in f.history] for f in runs]
    assert rows[0] == rows[1] == rows[2]
    for f in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0].model.state_dict().values(),
                                                     f.model.state_dict().values()))
    assert {f.precision for f in runs} == {"fp32"}  # auto on the CPU


def test_prefetched_keeps_order_bounds_the_queue_and_raises() -> None:
    running, most = [0], [0]
    lock = threading.Lock()

    def job(i: int) -> int:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.002 * (i % 3))
        with lock:
            running[0] -= 1
        return i

    started: list[int] = []

    def jobs():
        for i in range(20):
            started.append(i)
            yield lambda i=i: job(i)

    it = prefetched(jobs(), 2)
    assert next(it) == 0 and len(started) <= 2 + 2 + 1  # bounded: workers + 2 ahead
    assert list(it) == list(range(1, 20)) and most[0] <= 2

    def bad() -> int:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        list(prefetched([lambda: 1, bad, lambda: 3], 2))
    assert list(prefetched([lambda: 1, lambda: 2], 0)) == [1, 2]


def test_worker_counts() -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert [loader_workers(-1, t, cpu) for t in (1, 2, 4, 8)] == [0, 1, 2, 4]
    assert [loader_workers(-1, t, gpu) for t in (1, 4)] == [1, 4]
    assert loader_workers(0, 8, cpu) == 0 and loader_workers(3, 1, cpu) == 3


def test_precision_resolution_given_the_gpus_capability(monkeypatch: pytest.MonkeyPatch) -> None:
    assert precision.resolve("auto", "cuda", lambda: True) == "bf16"
    assert precision.resolve("auto", "cuda", lambda: False) == "fp16"
    assert precision.resolve("auto", "cpu", lambda: True) == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert precision.resolve("auto", "cuda") == "fp16"
    assert [precision.resolve(p, "cuda") for p in ("fp32", "bf16", "fp16")] == ["fp32", "bf16", "fp16"]
    assert precision.grad_scaler("fp16", "cpu") is not None
    assert precision.grad_scaler("bf16", "cuda") is None and precision.grad_scaler("fp32", "cuda") is None
    with pytest.raises(Exception, match="precision must be one of"):
        MOBILE.replace(precision="fp8")


def test_cpu_bf16_autocast_trains_and_is_recorded(splits) -> None:
    from tune.training.records import run_record

    result = loop.fit(MOBILE.replace(precision="bf16", epochs=1), *splits, log=None)
    assert result.precision == "bf16" and np.isfinite(result.history[0]["train_loss"])
    assert result.val_probs.dtype == np.float64
    assert run_record(MOBILE, result, {}).precision == "bf16"


def test_device_augmentation_uses_the_same_draws(splits) -> None:
    """The CUDA branch (crop and jitter as tensor ops), run here on the CPU: the same views as PIL's within
    resampling differences, flips applied after them."""
    cfg = MOBILE.replace(augment="crop,jitter", use_cache=False)
    inputs = cache.Inputs(loop.make_model(cfg), cfg, *splits, cache_dir=None)
    inputs.start_epoch(1)
    idx, flip = np.arange(5), torch.tensor([True, False, True, False, False])
    u = np.stack([draws((cfg.seed, int(i)), 0) for i in idx])
    assert u.shape == (5, DRAWS)
    pil = to_float(augment_images(splits[0].x, idx, inputs.spec, 0))
    plain = to_float(splits[0].x[idx])
    dev = augment_tensor(plain, u, inputs.spec)
    assert dev.shape == pil.shape
    # noisy 32 px images resample differently, but far closer to PIL's view than the unaugmented image is
    assert float((dev - pil).abs().mean()) < 0.5 * float((plain - pil).abs().mean())
    torch.testing.assert_close(dev.mean((2, 3)), pil.mean((2, 3)), atol=0.02, rtol=0)  # the jitter's colours
    inputs.device_aug = True  # what Inputs sets on CUDA
    b = inputs.train_host(idx, flip)
    assert b.x.dtype == torch.uint8 and np.array_equal(b.draws, u)
    flipped = torch.where(flip.view(-1, 1, 1, 1), dev.flip(-1), dev)
    torch.testing.assert_close(inputs.on_device(b), inputs.model.encode(flipped))


def test_gpu_check_says_no_gpu_and_does_nothing(tmp_path: Path) -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TUNE_GPU_CHECK_OUT": str(tmp_path / "out"),
           "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "no GPU" in done.stdout and not (tmp_path / "out").exists()


def test_precision_is_fixed_or_searched_from_a_space(tmp_path: Path) -> None:
    from tune.search.space import load_space

    (tmp_path / "s.yaml").write_text("fixed: {precision: bf16}\narchitectures:\n  custom_cnn:\n"
                                     "    precision: {type: categorical, choices: [fp32, bf16]}\n"
                                     "  efficientnet_lite0: {weights: packaged}\n")
    space = load_space(tmp_path / "s.yaml")
    assert space.base_config("efficientnet_lite0")["precision"] == "bf16"
    assert space.architectures["custom_cnn"]["precision"].choices == ("fp32", "bf16")
