"""The zoo's odd one out: a frequency-domain synthesis with no network and no up-sampling.

Every other family is a convolutional network, and its traces are in the *amplitude* spectrum: the peaks of
up-sampling at the 2-pixel period, or the missing high frequencies of a smoother image. Detectors and the
no-learning smoothness cue (mean absolute Laplacian) read exactly that. This family keeps each crop's low
frequencies as they are and its amplitude spectrum at every frequency, and draws the phases of the high
frequencies at random (one random field for the three channels, so the new detail is grey, as photographic detail
mostly is). Its fakes have the photo's power at every frequency, so they are about as sharp as the photo and show no
spectral peak; what gives them away is only that their fine detail is incoherent: edges dissolve into texture of
the right strength. A detector that caught the other families by their spectra has nothing to go on here, which
is what makes it a useful unseen family. (Phase randomisation is the classic surrogate-data method: Theiler et al.
1992.)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

CUTOFF = 0.15  # cycles per pixel at the working resolution: below it the crop is kept as it is
EDGE = 0.04    # width of the smooth hand-over from kept to re-phased, so the cutoff does not ring


def make(pool: np.ndarray, seed: int, rng: np.random.Generator) -> Callable[[torch.Tensor], torch.Tensor]:
    """A renderer drawing its phases from its own stream (the pool is not needed: nothing is trained)."""
    phases = np.random.default_rng(rng.integers(2**63))

    def render(x: torch.Tensor) -> torch.Tensor:
        imgs = x.numpy().astype(np.float64)  # (N, 3, H, W)
        h, w = imgs.shape[-2:]
        radius = np.hypot(*np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij"))
        keep = np.clip((CUTOFF + EDGE - radius) / EDGE, 0, 1)  # 1 below the cutoff, 0 above cutoff + edge
        spectra = np.fft.fft2(imgs)
        # The phases of a real white-noise field's spectrum are those of a real image: Hermitian symmetric, so the
        # inverse transform stays real.
        random = np.exp(1j * np.angle(np.fft.fft2(phases.standard_normal((len(imgs), 1, h, w)))))
        new = np.abs(spectra) * random
        out = np.fft.ifft2(keep * spectra + (1 - keep) * new).real
        return torch.from_numpy(out.clip(0, 1).astype(np.float32))

    return render
