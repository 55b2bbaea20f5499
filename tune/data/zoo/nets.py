"""The zoo's convolutional families: one small encoder-decoder trained briefly on train-region crops, with the
decoder's up-sampling as the one thing that changes, plus a full-resolution denoiser that never up-samples.

Up-sampling is where a generator's traces come from (Odena et al. 2016, "Deconvolution and checkerboard
artifacts"; Frank et al. 2020, "Leveraging frequency analysis for deep fake image recognition"):
- a transposed convolution with stride 2 and kernel 4 adds uneven overlap, a checkerboard at the 2-pixel period;
- nearest-neighbour up-sampling copies each pixel to a 2 x 2 block that the next convolution only partly hides;
- bilinear up-sampling interpolates, a low-pass that leaves the image smoother than a photo, with weak peaks;
- a sub-pixel convolution (pixel shuffle) writes the four pixels of each 2 x 2 block from four independent
  filters, a fixed 2 x 2 pattern wherever those filters disagree.
The denoiser has no up-sampling at all: its traces are its smoothing and the noise it fails to remove.

Same width, training steps, batch and patch for every family, so they are equally (under)trained.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

# Generator strength, tuned with benchmarks/demo_difficulty.py on the transposed-convolution family: the notebook's
# fixed CNN reaches a test ROC-AUC of 0.855 (seed 0) and 0.797 (seed 1), so the data is learnable but tuning has
# room to show. Fewer steps make fakes easier to catch.
WIDTH, STEPS, BATCH, PATCH = 16, 120, 16, 48
NOISE = 0.04  # the denoiser's input noise (std, in [0, 1] units): its residual is visible, not glaring


def encoder(w: int) -> list[nn.Module]:
    """Two stride-2 convolutions: 128 -> 32, four times fewer pixels per side than the crop."""
    return [nn.Conv2d(3, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(2 * w, 4 * w, 4, 2, 1), nn.ReLU()]


def autoencoder(width: int = WIDTH) -> nn.Sequential:
    """Strided-conv encoder, transposed-conv decoder: the generator half of AutoGAN, small. (Its layers, their order
    and so its initial weights are those of the original built-in generator: its datasets stay byte-identical.)"""
    w = width
    return nn.Sequential(
        *encoder(w),
        nn.ConvTranspose2d(4 * w, 2 * w, 4, 2, 1), nn.ReLU(),
        nn.ConvTranspose2d(2 * w, w, 4, 2, 1), nn.ReLU(),
        nn.Conv2d(w, 3, 3, padding=1), nn.Sigmoid(),
    )


def resize_conv(mode: str, width: int = WIDTH) -> nn.Sequential:
    """The resize-convolution decoder Odena et al. proposed against checkerboards: up-sample, then convolve."""
    w = width
    return nn.Sequential(
        *encoder(w),
        nn.Upsample(scale_factor=2, mode=mode), nn.Conv2d(4 * w, 2 * w, 3, padding=1), nn.ReLU(),
        nn.Upsample(scale_factor=2, mode=mode), nn.Conv2d(2 * w, w, 3, padding=1), nn.ReLU(),
        nn.Conv2d(w, 3, 3, padding=1), nn.Sigmoid(),
    )


def pixel_shuffle(width: int = WIDTH) -> nn.Sequential:
    """Sub-pixel convolution (Shi et al. 2016): a convolution to 4x the channels, rearranged into a 2x larger map."""
    w = width
    return nn.Sequential(
        *encoder(w),
        nn.Conv2d(4 * w, 4 * 2 * w, 3, padding=1), nn.PixelShuffle(2), nn.ReLU(),
        nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.PixelShuffle(2), nn.ReLU(),
        nn.Conv2d(w, 3, 3, padding=1), nn.Sigmoid(),
    )


class Denoiser(nn.Module):
    """DnCNN-style (Zhang et al. 2017), small: full-resolution convolutions predict the noise, which is subtracted.
    A dilated layer widens its view without any down- or up-sampling."""

    def __init__(self, width: int = WIDTH) -> None:
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=2, dilation=2), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, 3, 3, padding=1),
        )

    def forward(self, noisy: torch.Tensor) -> torch.Tensor:
        return (noisy - self.body(noisy)).clamp(0, 1)


def train(build: Callable[[], nn.Module], pool: np.ndarray, seed: int, rng: np.random.Generator,
          corrupt: Callable[[torch.Tensor], torch.Tensor] | None = None) -> nn.Module:
    """About a hundred Adam steps on random patches of train-region crops: deliberately brief, so the re-synthesis is
    plausible but imperfect, like a real generator's. `corrupt` (the denoiser's) makes the input from the target.
    For the transposed-convolution family this is, op for op, the original built-in generator's training."""
    with torch.random.fork_rng(devices=[]):  # seed the init without disturbing the caller's RNG
        torch.manual_seed(seed % 2**63)
        model = build()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    data = torch.from_numpy(pool).permute(0, 3, 1, 2).float() / 255
    for _ in range(STEPS):
        idx = rng.integers(len(data), size=BATCH)
        y, x = rng.integers(0, data.shape[-1] - PATCH + 1, size=2)
        batch = data[idx, :, y:y + PATCH, x:x + PATCH]
        loss = (model(batch if corrupt is None else corrupt(batch)) - batch).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def trained(architecture: str, *args: Any, pool: np.ndarray, seed: int, rng: np.random.Generator) -> nn.Module:
    """An encoder-decoder family: `architecture` (a function here, called with `args`) trained as above."""
    return train(lambda: globals()[architecture](*args), pool, seed, rng)


def denoiser(pool: np.ndarray, seed: int, rng: np.random.Generator) -> Callable[[torch.Tensor], torch.Tensor]:
    """Train the denoiser on noised patches, then re-synthesize a crop as denoise(crop + noise). Briefly trained, it
    removes the noise only in part: what is left has passed through its filters, so it is spatially correlated
    (structured) rather than white, on top of the smoothing every denoiser does."""
    noise = torch.Generator().manual_seed(int(rng.integers(2**63)))  # its own stream, drawn in a fixed order

    def noised(x: torch.Tensor) -> torch.Tensor:
        return x + NOISE * torch.randn(x.shape, generator=noise)

    model = train(Denoiser, pool, seed, rng, corrupt=noised)
    return lambda x: model(noised(x))
