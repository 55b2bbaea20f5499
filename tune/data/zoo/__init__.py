"""The generator zoo of the built-in dataset: `demo-data --generator FAMILY`.

Each family re-synthesizes a crop in its own way, so its fakes carry their own traces: where and how it
up-samples (or whether it does), what its synthesis smooths and what noise it leaves. This registry is the one
owner of the family names; each family lives in a small module (nets.py: the convolutional ones, spectral.py:
the frequency-domain one).

Everything else of a dataset is the family's business of tune/data/builtin.py and the same for every family
with the same seed: the crops (so the real images are byte-identical across families), the fake masks, the
colour correction to the source crop, the resize and the JPEG qualities. Only the fakes' synthesis differs, so
a detector that tells two families apart can only have learned the synthesis.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tune.core import UserError

if TYPE_CHECKING:  # the CLI lists the families at start-up; torch is imported only when one is made
    import numpy as np
    import torch

# A family's renderer: float (N, 3, H, W) crops in [0, 1] -> their re-synthesis, same shape, in [0, 1].
Render = Callable[["torch.Tensor"], "torch.Tensor"]


@dataclass(frozen=True)
class Family:
    name: str
    about: str  # what it does and which traces that leaves, one line (shown by --help)
    maker: str  # "module:function" in this package, imported when used
    args: tuple[Any, ...] = ()  # its first arguments; pool, seed and rng follow by name

    def make(self, pool: np.ndarray, seed: int, rng: np.random.Generator) -> Render:
        """Build the generator from a pool of uint8 (N, H, W, 3) train-region crops, the seed of its initial
        weights and its own random stream (training patches, noise), and return its renderer."""
        module, function = self.maker.split(":")
        build = getattr(importlib.import_module(f"tune.data.zoo.{module}"), function)
        return build(*self.args, pool=pool, seed=seed, rng=rng)


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("tconv", "convolutional autoencoder, transposed-convolution decoder (the default: AutoGAN-like)",
           "nets:trained", ("autoencoder",)),
    Family("nearest", "the same encoder, decoder up-samples by nearest neighbour then convolves",
           "nets:trained", ("resize_conv", "nearest")),
    Family("bilinear", "the same encoder, decoder up-samples bilinearly then convolves",
           "nets:trained", ("resize_conv", "bilinear")),
    Family("pixelshuffle", "the same encoder, sub-pixel convolution decoder (ESPCN's pixel shuffle)",
           "nets:trained", ("pixel_shuffle",)),
    Family("denoiser", "full-resolution residual denoiser (no up-sampling) run on a noised crop: smooths and "
           "leaves structured residual noise", "nets:denoiser"),
    Family("spectral", "no network: keeps the crop's low frequencies and its amplitude spectrum, draws the high "
           "frequencies' phases at random", "spectral:make"),
)}
DEFAULT = "tconv"


def family(name: str) -> Family:
    """The family called `name`; an unknown name is one line naming the known ones."""
    if name not in FAMILIES:
        raise UserError(f"unknown --generator {name!r}; the families are: {', '.join(FAMILIES)}")
    return FAMILIES[name]
