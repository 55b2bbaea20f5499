"""What a training step feeds the trainable part of a model, computed once where possible.

For a model with a frozen prefix (a pretrained backbone with some units frozen), the prefix's
output for a given input never changes: we compute it once per image, keep it in a .npy file
shared by every trial on the machine, and a step runs only the unfrozen units and the head.

What is stored is one *source* of pixels through the prefix: the plain images (valid, and train
without augmentation), or one augmented view of the training images (tune/data/augment.py), each also
flipped when flips are on. Every file is built lazily, by the first trial that needs it, once per
node (tune/training/store.py: a lock per file, the disk budget, least-recently-used eviction), written
batch by batch into a memory map (peak memory: one batch, augmentation included). Prefixes are chained:
a longer prefix's output is derived from a shorter one's of the same source and dtype by running only
the units in between. A depth is stored only when its output is smaller than the uint8 image it
replaces (Lite0 at 224 px: the first 4 units' outputs are larger); otherwise, and whenever the budget
or the disk has no room, the trial runs the prefix live from the decoded images and says so in one
line. Features may be stored as float16 (`cache_dtype`, half the disk); they are float32 once read.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tune.data.augment import DEVICE_OPS, AugSpec, View, augment_images, augment_tensor
from tune.data.augment import draws as augment_draws
from tune.data.images import ImageSet, as_tensor, to_float
from tune.models.detector import Detector
from tune.training import store
from tune.training.config import TrainConfig
from tune.training.deadline import check
from tune.training.loader import HostBatch, loader_workers, pinned, prefetched

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


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def as_float32(a: np.ndarray) -> torch.Tensor:
    """Stored features (float32 or float16) as a float32 tensor owning its memory."""
    return torch.from_numpy(np.array(a, dtype=np.float32))


def run_units(model: Detector, x: np.ndarray | View, start: int, *, flip: bool = False,
              out: np.ndarray | None = None) -> np.ndarray:
    """Units start.. of the frozen prefix over `x`: uint8 images when start is 0, else stored features.
    With `out` (a memory-mapped file) each batch is written there as it comes, so memory holds one batch."""
    device = model_device(model)
    units = model.frozen[start:]
    outs = []
    with torch.inference_mode():
        for i in range(0, len(x), ENCODE_BATCH):
            check()  # a search's deadline: a large feature cache can take minutes (store drops a half-built file)
            chunk = x[i:i + ENCODE_BATCH]
            b = (to_float(chunk) if start == 0 else as_float32(chunk)).to(device)
            if flip and start == 0:
                b = b.flip(-1)
            if b.dim() == 4:
                b = b.contiguous(memory_format=torch.channels_last)
            z = units(b).contiguous().cpu().numpy()
            if out is None:
                outs.append(z)
            else:
                out[i:i + len(z)] = z
    return np.concatenate(outs) if out is None else out


def encode_all(model: Detector, x: np.ndarray | View, *, flip: bool = False,
               out: np.ndarray | None = None) -> np.ndarray:
    return run_units(model, x, 0, flip=flip, out=out)


def source_key(spec: AugSpec | None, view: int) -> str:
    """Which pixels: "plain", or one view of the augmentation `spec` (tune.data.augment.AugSpec.key)."""
    return spec.key(view) if spec is not None else "plain"


def frozen_shape(model: Detector, size: int) -> tuple[int, ...]:
    """The frozen prefix's output shape for one image at this size."""
    with torch.inference_mode():
        return tuple(model.frozen(torch.zeros(1, 3, size, size, device=model_device(model))).shape[1:])


def frozen_bytes(model: Detector, size: int, dtype: str = "float32") -> int:
    """Bytes the frozen prefix's output takes per image at this size, stored as `dtype`."""
    return int(np.prod(frozen_shape(model, size))) * np.dtype(dtype).itemsize


def too_big(model: Detector, size: int, dtype: str) -> str:
    """Why this depth is not worth storing ("" when it is): its output is no smaller than the uint8 image,
    which the trial has anyway, so storing it costs more disk than the image for a short live pass. A
    pooled vector (the whole backbone frozen) is always stored: live, it is the whole backbone at every
    step, and it outweighs the image only at toy sizes (1280 floats: 5 kB, a 41 px image)."""
    per_image, image = frozen_bytes(model, size, dtype), 3 * size * size
    if per_image < image or len(frozen_shape(model, size)) == 1:
        return ""
    return f"its frozen prefix's output ({per_image / 1e3:.0f} kB an image as {dtype}) is not smaller than " \
           f"the image ({image / 1e3:.0f} kB)"


def cached_encode(model: Detector, data: ImageSet, *, flips: tuple[bool, ...], cache_dir: Path | None,
                  spec: AugSpec | None = None, view: int = 0, dtype: str = "float32",
                  label: str = "") -> list[np.ndarray] | None:
    """encode_all of one source (plain images or view `view`), one array per flip: None when it cannot be
    stored (see `stored`)."""
    return stored(model, data, flips=flips, cache_dir=cache_dir, spec=spec, view=view, dtype=dtype, label=label)[0]


def stored(model: Detector, data: ImageSet, *, flips: tuple[bool, ...], cache_dir: Path | None,
           spec: AugSpec | None = None, view: int = 0, dtype: str = "float32",
           label: str = "") -> tuple[list[np.ndarray] | None, str]:
    """(arrays, "") or (None, why they are not stored). Memoised on disk by (data fingerprint, image size,
    source, flip, dtype, frozen prefix); without a cache folder, computed now and kept in memory.

    Chained: when a shorter prefix of the same source and dtype is stored (a trial with more unfrozen
    units ran first), only the units in between run. Each returned memmap holds a lease on its file
    (tune/training/store.py) for as long as it (or a slice of it) lives: no other trial evicts it meanwhile.
    """
    pixels = View(data.x, spec, view)
    if cache_dir is None:
        return [encode_all(model, pixels, flip=f) for f in flips], ""
    keys = prefix_keys(model)
    n = len(model.frozen)
    side = spec.crop if spec is not None and spec.crop else data.x.shape[-1]  # resize crop: a view's window
    shape = (len(data), *frozen_shape(model, side))
    # the pixels' side as stored, and how they were made (resize crop: native pixels, not a resized image)
    made = f"{data.x.shape[-1]}{'-native' if data.resize == 'crop' else ''}"
    out = []
    for flip in flips:
        base = f"{data.fingerprint}-{made}-{len(data)}-{source_key(spec, view)}{'-flip' if flip else ''}"

        def path(k: int, base: str = base) -> Path:
            return Path(cache_dir) / f"features-v5-{base}-{dtype}-{keys[k]}.npy"

        def fill(mm: np.ndarray, flip: bool = flip, path: Any = path) -> None:
            for k in range(n - 1, 0, -1):  # the longest stored shorter prefix, leased while we read it
                lease = store.lease(path(k))
                if lease is not None:
                    with lease:
                        run_units(model, np.load(path(k), mmap_mode="r"), k, out=mm)
                    return
            encode_all(model, pixels, flip=flip, out=mm)

        meta = {"kind": "views" if spec is not None and spec.active else "features", "arch": label,
                "frozen_units": n, "dtype": dtype, "source": source_key(spec, view), "flip": flip,
                "split": data.split, "images": len(data), "size": int(side), "resize": data.resize}
        lease, why = store.get_or_build(path(n), shape, dtype, fill, meta)
        if lease is None:
            return None, why
        z = np.load(path(n), mmap_mode="r")
        z.lease = lease  # type: ignore[attr-defined]  # released when the array (and every slice) is gone
        out.append(z)
    return out, ""


def flips_of(cfg: TrainConfig) -> tuple[bool, ...]:
    return (False, True) if cfg.hflip else (False,)


def precompute(models: list[Detector], train: ImageSet, valid: ImageSet, cfg: TrainConfig, *,
               cache_dir: Path, train_view: bool = True, extra: Sequence[ImageSet] = ()) -> None:
    """Fill the cache for these depths, shortest prefix first, so the backbone runs over the images once
    and each longer prefix adds only its own units: valid and the held-out sources (`extra`), and
    (train_view) the first training view of `cfg`. Depths whose output is not smaller than the image
    are skipped. (A search builds lazily instead, in its trials: tune/search/weights_check.py says why.)"""
    for model in sorted(models, key=lambda m: len(m.frozen)):
        if model.has_frozen_params and not too_big(model, cfg.image_size, cfg.cache_dtype):
            kw: dict[str, Any] = {"cache_dir": cache_dir, "dtype": cfg.cache_dtype, "label": cfg.arch}
            for images in (valid, *extra):
                cached_encode(model, images, flips=(False,), **kw)
            if train_view:
                cached_encode(model, train, flips=flips_of(cfg), spec=cfg.aug, view=0, **kw)


class Inputs:
    """Batches for `model.forward_cached`: the frozen prefix's output, from the cache or computed live.

    Call `start_epoch(e)` before an epoch's batches: it picks the epoch's view, and the cached path
    loads (or builds) that view's features. The evaluated sets are valid (0) and then each held-out
    validation source in `extra`: `eval_batches(k, ...)`. A set or view the cache cannot hold (the depth
    rule, the budget, a full disk) is computed live, with one line saying so; the numbers are the same.
    """

    def __init__(self, model: Detector, cfg: TrainConfig, train: ImageSet, valid: ImageSet,
                 cache_dir: Path | None, extra: Sequence[ImageSet] = ()) -> None:
        self.model, self.cfg, self.train, self.valid, self.cache_dir = model, cfg, train, valid, cache_dir
        self.evaluated = [valid, *extra]
        self.device = model_device(model)
        self.spec = cfg.aug
        self.views = cfg.aug_views if self.spec.active else 1  # without augmentation every view is the same
        rule = too_big(model, cfg.image_size, cfg.cache_dtype) if model.has_frozen_params else ""
        cacheable = cfg.use_cache and model.has_frozen_params and not rule
        self.train_cached = cacheable and self.views >= 1
        views = self.views_bytes() if self.train_cached and cache_dir is not None else 0
        budget = store.budget_bytes(Path(cache_dir)) if views else 0
        self.train_cached = self.train_cached and views <= budget  # else views would evict each other in turn
        self.refused = ""  # why the cache could not hold a file: the rest of the trial then runs live
        self.eval_z: list[np.ndarray | None] = [None] * len(self.evaluated)
        for k, s in enumerate(self.evaluated if cacheable else ()):
            z, self.refused = self.stored(s, (False,))
            self.eval_z[k] = z[0] if z is not None else None
        if not model.has_frozen_params:
            self.mode = "no frozen layers"
        elif not cfg.use_cache:
            self.mode = "off"
        elif rule or self.refused:
            self.mode = f"live: {rule or self.refused}"
        elif self.views == 0:
            self.mode = "valid cached; train live (a fresh augmented view every epoch)"
        elif not self.train_cached:
            self.mode = f"valid cached; train live (its views would take {store.gb(views)} > the cache budget " \
                        f"{store.gb(budget)})"
        else:
            self.mode = "train and valid cached" + (f" ({self.views} augmented views)" if self.spec.active else "")
        self.train_cached = self.train_cached and not self.refused
        if cacheable and (self.refused or not self.train_cached and self.views) or rule and cfg.use_cache:
            self.say(f"{cfg.arch}: {self.mode}")  # what the cache could not hold: one line per trial
        self.view = 0
        self.train_z: list[np.ndarray] = []
        self.workers = loader_workers(cfg.workers, cfg.threads, self.device)
        # CUDA: crop and jitter of live views run on the device (CPU: PIL, exact, what the cache stores)
        self.device_aug = self.device.type == "cuda" and self.spec.active and set(self.spec.ops) <= DEVICE_OPS \
            and not self.spec.crop  # a native crop is cut on the host

    def views_bytes(self) -> int:
        """Disk the train views this trial can use take together."""
        per_image = frozen_bytes(self.model, self.cfg.image_size, self.cfg.cache_dtype)
        return len(self.train) * min(self.views, self.cfg.epochs) * len(flips_of(self.cfg)) * per_image

    def stored(self, data: ImageSet, flips: tuple[bool, ...], view: int = 0,
               spec: AugSpec | None = None) -> tuple[list[np.ndarray] | None, str]:
        if self.refused:  # a full disk or budget stays so for the trial: no more tries (nor lines)
            return None, self.refused
        return stored(self.model, data, flips=flips, cache_dir=self.cache_dir, spec=spec, view=view,
                      dtype=self.cfg.cache_dtype, label=self.cfg.arch)

    @staticmethod
    def say(line: str) -> None:
        print(f"[cache] {line}", flush=True)

    def view_of(self, epoch: int) -> int:
        """The view epoch `epoch` (1-based) trains on."""
        return (epoch - 1) % self.views if self.views >= 1 else epoch - 1

    def start_epoch(self, epoch: int) -> None:
        self.view = self.view_of(epoch)
        if not self.train_cached:
            return
        self.train_z = []  # the previous view's leases end here: another trial may evict it meanwhile
        z, why = self.stored(self.train, flips_of(self.cfg), self.view, self.spec)
        if z is None:
            self.refused = why
            self.mode = f"{self.mode}; train live from epoch {epoch} ({why})"
            self.say(f"{self.cfg.arch}: train live from epoch {epoch} ({why})")
            self.train_cached = False  # one line, not one per epoch: the budget will not grow during a trial
        else:
            self.train_z = z

    def train_batch(self, idx: np.ndarray, flip: torch.Tensor) -> torch.Tensor:
        """The epoch's view of train images `idx` through the frozen prefix; rows with `flip` mirrored."""
        return self.on_device(self.train_host(idx, flip, aug_threads=None))

    def train_host(self, idx: np.ndarray, flip: torch.Tensor, aug_threads: int | None = 1) -> HostBatch:
        """train_batch's CPU part, which a loader thread runs: stored features, or the view's uint8 pixels,
        mirrored where `flip` says. On CUDA, crop and jitter are left to the device (`on_device`)."""
        if not self.train_z:
            if self.device_aug:
                draws = np.stack([augment_draws((self.spec.seed, int(i)), self.view) for i in idx])
                return HostBatch(pinned(as_tensor(self.train.x[idx]), self.device), draws, flip)
            x = as_tensor(augment_images(self.train.x, idx, self.spec, self.view, threads=aug_threads))
            return HostBatch(pinned(torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x), self.device))
        z = np.array(self.train_z[0][idx], dtype=np.float32)
        if len(self.train_z) > 1 and bool(flip.any()):
            flipped = flip.numpy()
            z[flipped] = self.train_z[1][idx[flipped]]
        return HostBatch(pinned(torch.from_numpy(z), self.device))

    def on_device(self, b: HostBatch) -> torch.Tensor:
        """A host batch on the model's device, through the frozen prefix if it is pixels: uint8 crosses to the
        device (a quarter of float32's bytes) and becomes float there (on the CPU, the same computation)."""
        x = b.x.to(self.device, non_blocking=True)
        if x.dtype != torch.uint8:
            return x
        x = to_float(x)
        if b.draws is not None and b.flip is not None:
            x = augment_tensor(x, b.draws, self.spec)
            x = torch.where(b.flip.to(self.device).view(-1, 1, 1, 1), x.flip(-1), x)
        return self.model.encode(x.contiguous(memory_format=torch.channels_last))

    def eval_batches(self, k: int, batch_size: int) -> Iterator[torch.Tensor]:
        """Evaluated set k (0: valid, then the held-out sources) through the frozen prefix, plain, in order."""
        images, z = self.evaluated[k], self.eval_z[k]

        def host(i: int) -> HostBatch:
            rows = as_float32(z[i:i + batch_size]) if z is not None else as_tensor(images.x[i:i + batch_size])
            return HostBatch(pinned(rows, self.device))

        jobs = (functools.partial(host, i) for i in range(0, len(images), batch_size))
        return (self.on_device(b) for b in prefetched(jobs, self.workers))

    def valid_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        return self.eval_batches(0, batch_size)
