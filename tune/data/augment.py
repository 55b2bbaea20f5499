"""Train-time augmentation as a pure function of (image, seed, view), so that it can be cached.

A frozen backbone's output is what makes trials cheap (tune/training/cache.py), but a cache of one fixed copy
of every image leaves nothing to augment. So augmentation comes in *views*: view v of training image
i is `augment(x_i, seed=(seed, i), view=v)`, a fixed function of its arguments. With `aug_views` V,
epoch e trains on view (e - 1) mod V: the frozen part runs once per view (and orientation), every
trial with the same frozen part, seed and augmentation settings shares the stored views, and live
(uncached) training computes the very same pixels. `aug_views: 0` draws a fresh view every epoch
(view e - 1), which only live training can do. Horizontal flips stay a per-step choice (`hflip`).

The augmentations, at strength s in [0, 1] (1 is the standard setting):
- crop:   a random crop of area fraction U[1 - s/2, 1] and aspect ratio in [3/4, 4/3]^s, resized back;
- jitter: brightness, contrast and saturation each scaled by U[1 - 0.4 s, 1 + 0.4 s];
- blur:   with probability s/2, a Gaussian blur with sigma U[0.1, 3] (Wang et al. 2020: p 0.5, sigma 0-3);
- jpeg:   with probability s/2, JPEG re-compression at quality U{30..100} (Wang et al. 2020).
- cnndetection: CNNDetection's Blur+JPEG (Wang et al. 2020) as its paper has it: with probability p = s/2 a
          Gaussian blur with sigma U[0, 3], then, independently with probability p, JPEG at quality U{30..100}
          (strength 1: the paper's "Blur+JPEG (0.5)"; 0.2..1 spans its p 0.1..0.5). It replaces blur and jpeg.
They run in that order (JPEG last, as an image's last save). Under `resize: crop` a view first cuts a random
image_size window at native resolution from the larger centre square the training images are stored at
(tune/data/decode.py, crop_side), so every view is cached like an augmented one; augment's crop, which resamples,
is refused there. Blur and JPEG are evaluate's own
perturbations (tune/data/perturb.py), so "blur 2" means the same thing in training and in evaluation.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageEnhance

from tune.core import UserError
from tune.data.perturb import Condition, native

AUGMENTATIONS = ("crop", "jitter", "blur", "jpeg")  # the order they are applied in ("all")
ORDER = (*AUGMENTATIONS, "cnndetection")  # with the preset, which is blur and JPEG as its paper has them
# Random numbers drawn per (image, view), whichever augmentations are on; the first 11 sit where runs made with
# 11 draws had them, so those runs reproduce.
DRAWS = 13


def parse_augment(value: str) -> tuple[str, ...]:
    """"crop,blur" → ("crop", "blur") in application order; "all" → crop to jpeg; "none" or "" → ()."""
    names = [n.strip().lower() for n in str(value).replace("+", ",").split(",") if n.strip()]
    if names in ([], ["none"]):
        return ()
    if names == ["all"]:
        return AUGMENTATIONS
    unknown = [n for n in names if n not in ORDER]
    if unknown:
        raise UserError(f"unknown augmentation {unknown[0]!r} in augment={value!r}: expected a comma-separated "
                        f"list of {', '.join(ORDER)} (or all, or none)")
    if "cnndetection" in names and {"blur", "jpeg"} & set(names):
        raise UserError(f"augment={value!r}: cnndetection is blur and JPEG already (Wang et al. 2020's Blur+JPEG); "
                        "leave blur and jpeg out")
    return tuple(a for a in ORDER if a in names)


@dataclass(frozen=True)
class AugSpec:
    """What a view is: which augmentations, how strong, and the seed of their random draws."""

    ops: tuple[str, ...]
    strength: float
    seed: int
    crop: int = 0  # resize: crop: each view first cuts a random crop x crop window at native resolution

    @property
    def active(self) -> bool:
        return bool(self.ops) and self.strength > 0 or self.crop > 0

    def key(self, view: int) -> str:
        """Names view `view` in cache file names: the same key, the same pixels."""
        if not self.active:
            return "plain"
        ops = "+".join(self.ops) if self.ops and self.strength > 0 else "none"
        return f"{f'crop{self.crop}-' if self.crop else ''}{ops}-s{self.strength:.6g}-seed{self.seed}-view{view}"


def draws(seed: tuple[int, ...], view: int) -> np.ndarray:
    """The DRAWS uniform numbers that decide view `view` of one image, wherever it is augmented."""
    return np.random.default_rng([*seed, view]).random(DRAWS)


def crop_box(u: np.ndarray, size: int, s: float) -> tuple[float, float, float, float]:
    """The crop's (left, top, right, bottom) in pixels, from one image's draws."""
    area = 1 - 0.5 * s * u[0]
    ratio = math.exp((2 * u[1] - 1) * math.log(4 / 3) * s)
    w, h = min(1.0, math.sqrt(area * ratio)) * size, min(1.0, math.sqrt(area / ratio)) * size
    left, top = u[2] * (size - w), u[3] * (size - h)
    return left, top, left + w, top + h


def jitter_factors(u: np.ndarray, s: float) -> tuple[float, float, float]:
    """Brightness, contrast and saturation factors, from one image's draws."""
    return (1 + 0.4 * s * (2 * u[4] - 1), 1 + 0.4 * s * (2 * u[5] - 1), 1 + 0.4 * s * (2 * u[6] - 1))


def native_crop(img: np.ndarray, u: np.ndarray, crop: int) -> np.ndarray:
    """A crop x crop window of uint8 (3, R, R) at offsets from draws 11 and 12: its pixels, never resampled."""
    top, left = (min(img.shape[k - 10] - crop, int(u[k] * (img.shape[k - 10] - crop + 1))) for k in (11, 12))
    return img[:, top:top + crop, left:left + crop]


def augment(img: np.ndarray, *, seed: tuple[int, ...], view: int, ops: tuple[str, ...],
            strength: float, crop: int = 0) -> np.ndarray:
    """uint8 (3, S, S) → augmented uint8 (3, S, S); the same arguments give the same pixels. With `crop`, first
    a random crop x crop window of the (larger) image at native resolution."""
    u = draws(seed, view)
    if crop:
        img = np.ascontiguousarray(native_crop(img, u, crop))
    if not ops or strength <= 0:
        return img
    size = img.shape[-1]
    im = Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0)))
    s = float(strength)
    if "crop" in ops:
        im = im.resize((size, size), Image.BILINEAR, box=crop_box(u, size, s))
    if "jitter" in ops:
        for enhance, factor in zip((ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color),
                                   jitter_factors(u, s)):
            im = enhance(im).enhance(factor)
    if "blur" in ops and u[7] < s / 2:
        im = native(im, Condition("blur", 0.1 + 2.9 * float(u[8])))
    if "jpeg" in ops and u[9] < s / 2:
        im = native(im, Condition("jpeg", 30 + min(70, int(71 * float(u[10])))))
    if "cnndetection" in ops:  # the same draws as blur and jpeg; sigma from 0, as in the paper
        if u[7] < s / 2:
            im = native(im, Condition("blur", 3.0 * float(u[8])))
        if u[9] < s / 2:
            im = native(im, Condition("jpeg", 30 + min(70, int(71 * float(u[10])))))
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8).transpose(2, 0, 1))


def augment_images(x: np.ndarray, idx: np.ndarray, spec: AugSpec, view: int, *,
                   threads: int | None = None) -> np.ndarray:
    """View `view` of the images x[idx] (their indices in the split seed them), as uint8 (B, 3, S, S).
    `threads`: how many augment the batch's images (default: TUNE_AUG_THREADS, else torch's thread count);
    the training loader's workers pass 1, as they already prepare several batches at once."""
    if not spec.active:
        return np.asarray(x[idx])
    side = spec.crop or x.shape[-1]
    out = np.empty((len(idx), x.shape[1], side, side), dtype=np.uint8)

    def one(j: int) -> None:
        i = int(idx[j])  # a slice, not x[i]: the live stand-in for a decoded array (data.LiveImages) reads slices
        out[j] = augment(np.asarray(x[i:i + 1])[0], seed=(spec.seed, i), view=view, ops=spec.ops,
                         strength=spec.strength, crop=spec.crop)

    workers = max(1, min(len(idx), threads or int(os.environ.get("TUNE_AUG_THREADS", "0")) or _threads()))
    if workers == 1:
        for j in range(len(idx)):
            one(j)
    else:  # PIL's resize, filters and JPEG codec release the GIL
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, range(len(idx))))
    return out


# What `augment_tensor` can do on the device; blur and JPEG (PIL's codec) stay on the CPU.
DEVICE_OPS = frozenset({"crop", "jitter"})


def augment_tensor(x: torch.Tensor, u: np.ndarray, spec: AugSpec) -> torch.Tensor:
    """Float images in [0, 1] (B, 3, S, S) on any device → their crop and jitter views, decided by the same
    per-image draws `u` (B, DRAWS) as `augment`, computed with torchvision's v2 tensor ops so that on CUDA the
    pixels never return to the CPU. The same draws, not the same pixels: another resampler and float rather
    than PIL's 8-bit arithmetic, so CPU training keeps `augment` (exact, and what the feature cache stores)."""
    from torchvision.transforms.v2 import functional as F  # heavy: torchvision only for augmenting on the GPU

    size, s = x.shape[-1], float(spec.strength)
    out = []
    for img, uu in zip(x, u):
        if "crop" in spec.ops:
            left, top, right, bottom = crop_box(uu, size, s)
            img = F.resized_crop(img, round(top), round(left), max(1, round(bottom - top)),
                                 max(1, round(right - left)), [size, size], antialias=True)
        if "jitter" in spec.ops:
            b, c, sat = jitter_factors(uu, s)
            img = F.adjust_saturation(F.adjust_contrast(F.adjust_brightness(img, b), c), sat)
        out.append(img)
    return torch.stack(out)


def _threads() -> int:
    return max(1, torch.get_num_threads())


class View:
    """View `view` of `spec` of the images `x`, sliced batch by batch (tune/training/cache.py builds a
    cache file from it): each image's view is seeded by its index, so a slice's pixels are the whole
    view's, and memory holds one batch of them, never the whole view. spec None: the plain images."""

    def __init__(self, x: np.ndarray, spec: AugSpec | None, view: int) -> None:
        self.x, self.spec, self.view = x, spec, view

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, s: slice) -> np.ndarray:
        if self.spec is None or not self.spec.active:
            return np.asarray(self.x[s])
        return augment_images(self.x, np.arange(len(self.x))[s], self.spec, self.view)
