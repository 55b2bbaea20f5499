"""What a training step feeds the trainable part of a model, computed once where possible.

For a model with a frozen prefix (a pretrained backbone with some units frozen), the prefix's
output for a given input never changes: we compute it once per image, keep it in a .npy file
shared by every trial on the machine, and a step runs only the unfrozen units and the head.

What is stored is one *source* of pixels through the prefix: the plain images (valid, and train
without augmentation), or one augmented view of the training images (tune/augment.py), each also
flipped when flips are on. Views are built when an epoch first needs one, so a trial that ASHA
stops after two epochs builds at most two. Prefixes are chained: a longer prefix's output is
derived from a shorter one's of the same source by running only the units in between, so a search
over several depths pays about one backbone pass per source. Views that would not fit the cache's
size limit, and fresh views every epoch (`aug_views: 0`), are computed live; valid is always cached,
and so is every held-out validation source (tune/heldout.py): plain images, never augmented.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from tune.data.augment import AugSpec, augment_images
from tune.data.images import ImageSet, as_tensor, to_float
from tune.models.detector import Detector
from tune.training.config import TrainConfig

ENCODE_BATCH = 64
LIMIT_GB = float(os.environ.get("TUNE_VIEW_CACHE_GB", "8"))  # the train views one model may store


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


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


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


def source_key(spec: AugSpec | None, view: int) -> str:
    """Which pixels: "plain", or one view of the augmentation `spec` (tune.data.augment.AugSpec.key)."""
    return spec.key(view) if spec is not None else "plain"


def cached_encode(model: Detector, data: ImageSet, *, flips: tuple[bool, ...], cache_dir: Path | None,
                  spec: AugSpec | None = None, view: int = 0) -> list[np.ndarray]:
    """encode_all of one source (plain images or view `view`), one array per flip, memoised on disk by
    (data fingerprint, image size, source, flip, frozen prefix).

    Chained: when a shorter prefix of the same source is stored (a trial with more unfrozen units ran
    first, or the search precomputed it), only the units in between run. A file lock makes concurrent
    trials on one machine wait for the first to finish instead of all computing the same thing; files
    are written to a temporary name and renamed. The source's pixels are augmented at most once.
    """
    pixels: list[np.ndarray] = []

    def source() -> np.ndarray:
        if not pixels:
            pixels.append(data.x if spec is None or not spec.active else
                          augment_images(data.x, np.arange(len(data)), spec, view))
        return pixels[0]

    if cache_dir is None:
        return [encode_all(model, source(), flip=f) for f in flips]
    keys = prefix_keys(model)
    n = len(model.frozen)
    out = []
    for flip in flips:
        base = f"{data.fingerprint}-{data.x.shape[-1]}-{len(data)}-{source_key(spec, view)}{'-flip' if flip else ''}"

        def path(k: int, base: str = base) -> Path:
            return Path(cache_dir) / f"features-v4-{base}-{keys[k]}.npy"

        target = path(n)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not target.exists():
                start = next((k for k in range(n - 1, 0, -1) if path(k).exists()), 0)
                if start:
                    z = run_units(model, np.load(path(start), mmap_mode="r"), start)
                else:
                    z = encode_all(model, source(), flip=flip)
                tmp = target.with_suffix(f".{os.getpid()}.tmp.npy")
                np.save(tmp, z)
                os.replace(tmp, target)
        out.append(np.load(target, mmap_mode="r"))
    return out


def flips_of(cfg: TrainConfig) -> tuple[bool, ...]:
    return (False, True) if cfg.hflip else (False,)


def precompute(models: list[Detector], train: ImageSet, valid: ImageSet, cfg: TrainConfig, *,
               cache_dir: Path, train_view: bool = True, extra: Sequence[ImageSet] = ()) -> None:
    """Fill the cache for every frozen depth a search can ask for, shortest prefix first, so the backbone
    runs over the images once and each longer prefix adds only its own units: valid and the held-out
    sources (`extra`), and (train_view) the first training view of `cfg`; later views are built by the
    first trial that reaches them."""
    for model in sorted(models, key=lambda m: len(m.frozen)):
        if model.has_frozen_params:
            for images in (valid, *extra):
                cached_encode(model, images, flips=(False,), cache_dir=cache_dir)
            if train_view:
                cached_encode(model, train, flips=flips_of(cfg), cache_dir=cache_dir, spec=cfg.aug, view=0)


def frozen_bytes(model: Detector, size: int) -> int:
    """Bytes the frozen prefix's output takes per image at this size (float32)."""
    with torch.inference_mode():
        z = model.frozen(torch.zeros(1, 3, size, size, device=model_device(model)))
    return int(z.numel()) * 4


class Inputs:
    """Batches for `model.forward_cached`: the frozen prefix's output, from the cache or computed live.

    Call `start_epoch(e)` before an epoch's batches: it picks the epoch's view, and the cached path
    loads (or builds) that view's features. The evaluated sets are valid (0) and then each held-out
    validation source in `extra`: `eval_batches(k, ...)`.
    """

    def __init__(self, model: Detector, cfg: TrainConfig, train: ImageSet, valid: ImageSet,
                 cache_dir: Path | None, extra: Sequence[ImageSet] = ()) -> None:
        self.model, self.cfg, self.train, self.valid, self.cache_dir = model, cfg, train, valid, cache_dir
        self.evaluated = [valid, *extra]
        self.device = model_device(model)
        self.spec = cfg.aug
        self.views = cfg.aug_views if self.spec.active else 1  # without augmentation every view is the same
        cacheable = cfg.use_cache and model.has_frozen_params
        stored = 0.0
        if cacheable and self.views >= 1:
            used = min(self.views, cfg.epochs) * len(flips_of(cfg))
            stored = len(train) * used * frozen_bytes(model, cfg.image_size) / 2**30
        self.train_cached = cacheable and self.views >= 1 and stored <= LIMIT_GB
        if not cacheable:
            self.mode = "off" if model.has_frozen_params else "no frozen layers"
        elif self.train_cached:
            self.mode = "train and valid cached" + (f" ({self.views} augmented views)" if self.spec.active else "")
        elif self.views == 0:
            self.mode = "valid cached; train live (a fresh augmented view every epoch)"
        else:
            self.mode = f"valid cached; train live (its views would take {stored:.1f} GB > {LIMIT_GB:g} GB)"
        self.eval_z = ([cached_encode(model, s, flips=(False,), cache_dir=cache_dir)[0] for s in self.evaluated]
                       if cacheable else None)
        self.view = 0
        self.train_z: list[np.ndarray] = []

    def view_of(self, epoch: int) -> int:
        """The view epoch `epoch` (1-based) trains on."""
        return (epoch - 1) % self.views if self.views >= 1 else epoch - 1

    def start_epoch(self, epoch: int) -> None:
        self.view = self.view_of(epoch)
        if self.train_cached:
            self.train_z = cached_encode(self.model, self.train, flips=flips_of(self.cfg), cache_dir=self.cache_dir,
                                         spec=self.spec, view=self.view)

    def train_batch(self, idx: np.ndarray, flip: torch.Tensor) -> torch.Tensor:
        """The epoch's view of train images `idx` through the frozen prefix; rows with `flip` mirrored."""
        if not self.train_cached:
            x = as_tensor(augment_images(self.train.x, idx, self.spec, self.view))
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            return self.model.encode(to_float(x).to(self.device).contiguous(memory_format=torch.channels_last))
        z = np.array(self.train_z[0][idx])
        if len(self.train_z) > 1 and bool(flip.any()):
            flipped = flip.numpy()
            z[flipped] = self.train_z[1][idx[flipped]]
        return torch.from_numpy(z).to(self.device)

    def eval_batches(self, k: int, batch_size: int) -> Iterator[torch.Tensor]:
        """Evaluated set k (0: valid, then the held-out sources) through the frozen prefix, plain, in order."""
        images = self.evaluated[k]
        for i in range(0, len(images), batch_size):
            if self.eval_z is not None:
                yield as_tensor(self.eval_z[k][i:i + batch_size]).to(self.device)
            else:
                x = to_float(images.x[i:i + batch_size]).to(self.device)
                yield self.model.encode(x.contiguous(memory_format=torch.channels_last))

    def valid_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        return self.eval_batches(0, batch_size)
