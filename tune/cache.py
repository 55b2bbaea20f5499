"""What a training step feeds the trainable part of a model, computed once where possible.

For a model with a frozen prefix (a pretrained backbone with some units frozen), the prefix's
output never changes: we compute it once per image (and once per orientation when flips are on),
keep it in a .npy file shared by every trial on the machine, and a step runs only the unfrozen
units and the head. Prefixes are chained: a longer prefix's features are derived from a shorter
one's by running only the units in between, so a search over several depths pays about one
backbone pass. Random blur or JPEG re-compression cannot be enumerated, so then the train split falls
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


def prefix_keys(model: Detector) -> list[str]:
    """keys[k] names the output of the first k units of the frozen prefix: a hash chain over each unit's
    structure and weights, so two models that share their first k units share keys[k]."""
    h = hashlib.sha256(b"prefix-v3")
    keys = [h.hexdigest()[:16]]
    for unit in model.frozen:
        h.update(repr(unit).encode())
        for name, t in unit.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().contiguous().cpu().numpy().tobytes())
        keys.append(h.hexdigest()[:16])
    return keys


def frozen_key(model: Detector) -> str:
    """Hash of the frozen prefix's weights and structure: changes whenever its outputs could."""
    return prefix_keys(model)[-1]


def run_units(model: Detector, x: np.ndarray, start: int, *, flip: bool = False) -> np.ndarray:
    """Units start.. of the frozen prefix over `x`: uint8 images when start is 0, else stored features."""
    device = model_device(model)
    units = model.frozen[start:]
    outs = []
    with torch.inference_mode():
        for i in range(0, len(x), ENCODE_BATCH):
            b = (to_float(x[i:i + ENCODE_BATCH]) if start == 0 else as_tensor(x[i:i + ENCODE_BATCH])).to(device)
            if flip and start == 0:
                b = b.flip(-1)
            if b.dim() == 4:
                b = b.contiguous(memory_format=torch.channels_last)
            outs.append(units(b).contiguous().cpu().numpy())
    return np.concatenate(outs)


def encode_all(model: Detector, x: np.ndarray, *, flip: bool = False) -> np.ndarray:
    return run_units(model, x, 0, flip=flip)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def cached_encode(model: Detector, data: ImageSet, *, flip: bool, cache_dir: Path | None) -> np.ndarray:
    """encode_all, memoised on disk by (data fingerprint, image size, frozen prefix, flip).

    Chained: when a shorter prefix of the same backbone is already stored (a trial with more
    unfrozen units ran first, or the search precomputed it), only the units in between run.
    A file lock makes concurrent trials on one machine wait for the first to finish instead of
    all computing the same thing; the file is written to a temporary name and renamed.
    """
    keys = prefix_keys(model)
    n = len(model.frozen)
    base = f"{data.fingerprint}-{data.x.shape[-1]}-{len(data)}{'-flip' if flip else ''}"
    if cache_dir is None:
        return encode_all(model, data.x, flip=flip)

    def path(k: int) -> Path:
        return Path(cache_dir) / f"features-v3-{base}-{keys[k]}.npy"

    target = path(n)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.exists():
            start = next((k for k in range(n - 1, 0, -1) if path(k).exists()), 0)
            if start:
                z = run_units(model, np.load(path(start), mmap_mode="r"), start)
            else:
                z = encode_all(model, data.x, flip=flip)
            tmp = target.with_suffix(f".{os.getpid()}.tmp.npy")
            np.save(tmp, z)
            os.replace(tmp, target)
    return np.load(target, mmap_mode="r")


def precompute(models: list[Detector], train: ImageSet, valid: ImageSet, *, hflip: bool,
               cache_dir: Path) -> None:
    """Fill the cache for every frozen depth a search can ask for, shortest prefix first, so the
    backbone runs over the images once and each longer prefix adds only its own units."""
    for model in sorted(models, key=lambda m: len(m.frozen)):
        if model.has_frozen_params:
            for data, flip in ((valid, False), (train, False), *([(train, True)] if hflip else [])):
                cached_encode(model, data, flip=flip, cache_dir=cache_dir)


class Inputs:
    """Batches for `model.forward_cached`: the frozen prefix's output, from the cache or computed live."""

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
