"""What a training step feeds the trainable part of a model, computed once where possible.

For a model with a frozen prefix (MobileNetV2 with `unfrozen_blocks` < 19), the prefix's output
never changes: we compute it once per image (and once per orientation when flips are on), keep it
in a .npy file shared by every trial on the machine, and a step runs only the unfrozen blocks and
the head. Random blur or JPEG re-compression cannot be enumerated, so then the train split falls
back to live computation (valid is always cached) and the run records it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from tune.config import TrainConfig
from tune.data import AugPlan, ImageSet, apply_plan, as_tensor, to_float
from tune.models import Detector

ENCODE_BATCH = 64
# Counts full passes over a split through a frozen prefix, for tests and benchmarks.
BACKBONE_PASSES: list[str] = []


def frozen_key(model: Detector) -> str:
    """Hash of the frozen prefix's weights and structure: changes whenever its outputs could."""
    h = hashlib.sha256(repr(model.frozen).encode())
    for name, t in model.frozen.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def encode_all(model: Detector, x: np.ndarray, *, flip: bool = False) -> np.ndarray:
    device = model_device(model)
    outs = []
    with torch.inference_mode():
        for i in range(0, len(x), ENCODE_BATCH):
            b = to_float(x[i:i + ENCODE_BATCH]).to(device)
            if flip:
                b = b.flip(-1)
            outs.append(model.frozen(b.contiguous(memory_format=torch.channels_last)).contiguous().cpu().numpy())
    return np.concatenate(outs)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def cached_encode(model: Detector, data: ImageSet, *, flip: bool, cache_dir: Path | None) -> np.ndarray:
    """encode_all, memoised on disk by (data fingerprint, image size, frozen weights, flip).

    A file lock makes concurrent trials on one machine wait for the first to finish instead of
    all computing the same thing; the file is written to a temporary name and renamed.
    """
    key = f"{data.fingerprint}-{data.x.shape[-1]}-{frozen_key(model)}-{len(data)}{'-flip' if flip else ''}"
    if cache_dir is None:
        BACKBONE_PASSES.append(key)
        return encode_all(model, data.x, flip=flip)
    # v2: features from before the frozen prefix was put in eval mode at build time used batch statistics.
    path = Path(cache_dir) / f"features-v2-{key}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            BACKBONE_PASSES.append(key)
            z = encode_all(model, data.x, flip=flip)
            tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
            np.save(tmp, z)
            os.replace(tmp, path)
    return np.load(path, mmap_mode="r")


class Inputs:
    """Batches for `model.forward_features`, from the cache or computed live."""

    def __init__(self, model: Detector, cfg: TrainConfig, train: ImageSet, valid: ImageSet,
                 cache_dir: Path | None) -> None:
        self.model, self.train, self.valid = model, train, valid
        self.device = model_device(model)
        cacheable = cfg.use_cache and model.has_frozen_params
        self.train_live = not cacheable or cfg.blur_prob > 0 or cfg.jpeg_prob > 0
        if not cacheable:
            self.mode = "off" if model.has_frozen_params else "no frozen layers"
        elif self.train_live:
            self.mode = "valid cached; train live (blur/JPEG augmentation cannot be cached)"
        else:
            self.mode = "train and valid cached"
        self.valid_z = cached_encode(model, valid, flip=False, cache_dir=cache_dir) if cacheable else None
        self.train_z = self.train_z_flip = None
        if not self.train_live:
            self.train_z = cached_encode(model, train, flip=False, cache_dir=cache_dir)
            if cfg.hflip:
                self.train_z_flip = cached_encode(model, train, flip=True, cache_dir=cache_dir)

    def train_batch(self, idx: np.ndarray, plan: AugPlan) -> torch.Tensor:
        if self.train_z is None:
            x = apply_plan(as_tensor(self.train.x[idx]), plan).to(self.device)
            return self.model.encode(x.contiguous(memory_format=torch.channels_last))
        z = np.array(self.train_z[idx])
        if self.train_z_flip is not None and bool(plan.flip.any()):
            flipped = plan.flip.numpy()
            z[flipped] = self.train_z_flip[idx[flipped]]
        return torch.from_numpy(z).to(self.device)

    def valid_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        for i in range(0, len(self.valid), batch_size):
            if self.valid_z is not None:
                yield as_tensor(self.valid_z[i:i + batch_size]).to(self.device)
            else:
                x = to_float(self.valid.x[i:i + batch_size]).to(self.device)
                yield self.model.encode(x.contiguous(memory_format=torch.channels_last))
