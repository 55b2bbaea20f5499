"""Robustness conditions for `evaluate --perturb`: JPEG re-compression, Gaussian blur, down-scaling.

They follow the literature (Wang et al., CVPR 2020, and DeepfakeBench's robustness tables):
- `jpeg=Q`: re-encode with PIL's JPEG encoder at quality Q (1-100), at the image's native size;
- `blur=S`: Gaussian blur with standard deviation S pixels (scipy.ndimage.gaussian_filter per
  channel, as Wang et al.), at the image's native size;
- `resize=F`: the model's input shrunk to F x its side (0 < F < 1) and scaled back up, so the model
  sees F of its resolution whatever the image's native size.
All are pure functions of the pixels: no random numbers, so a condition gives the same pixels in
every run and on every machine with the same PIL/scipy (tests check it). JPEG and blur do not
depend on the model, so they run once per image and condition and every model's input is resized
from their result (`native`, then `model_input`).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter1d

from tune.core import UserError
from tune.data.decode import to_model_size

# name -> (what a severity is, its type, its valid range)
KINDS: dict[str, tuple[str, type, Callable[[float], bool]]] = {
    "jpeg": ("a JPEG quality, an integer 1-100", int, lambda v: 1 <= v <= 100),
    "blur": ("a Gaussian sigma in pixels, > 0 and <= 50", float, lambda v: 0 < v <= 50),
    "resize": ("a down-scale factor, > 0 and < 1", float, lambda v: 0 < v < 1)}
EXAMPLE = "--perturb jpeg=95,75,50 blur=1,2 resize=0.5,0.25 (after the DATA folders)"


@dataclass(frozen=True)
class Condition:
    """How the test images are altered before scoring; perturbation None is the clean images."""

    perturbation: str | None = None
    severity: float | int | None = None

    @property
    def name(self) -> str:
        return "clean" if self.perturbation is None else f"{self.perturbation}={self.severity:g}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "perturbation": self.perturbation, "severity": self.severity}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Condition:
        """A condition as to_dict wrote it (its name follows from the other two), or named only ("jpeg=75")."""
        if "perturbation" not in d and d.get("name", "clean") != "clean":
            kind, _, severity = str(d["name"]).partition("=")
            return cls(kind, float(severity) if "." in severity else int(severity))
        return cls(d.get("perturbation"), d.get("severity"))


CLEAN = Condition()


def _severity(kind: str, text: str) -> float | int:
    what, typ, ok = KINDS[kind]
    bad = UserError(f"bad --perturb severity {kind}={text!r}: expected {what}, e.g. {EXAMPLE}")
    try:
        value = typ(text)
    except ValueError:
        raise bad from None
    if not (math.isfinite(value) and ok(value)):
        raise bad
    return value


def parse_perturb(specs: list[str] | None) -> list[Condition]:
    """["jpeg=95,75", "blur=1"] → [clean, jpeg=95, jpeg=75, blur=1] (clean always first; repeats dropped)."""
    out = [CLEAN]
    for token in (t for spec in specs or [] for t in spec.split()):
        kind, sep, values = token.partition("=")
        kind = kind.strip().lower()
        if kind not in KINDS:
            raise UserError(f"unknown perturbation {token!r}: expected one of {', '.join(KINDS)} as NAME=S1,S2, "
                            f"e.g. {EXAMPLE}")
        if not sep or not values.strip(",").strip():
            raise UserError(f"--perturb {token!r} has no severities: expected {kind}=S1,S2 with each S "
                            f"{KINDS[kind][0]}")
        for text in values.split(","):
            c = Condition(kind, _severity(kind, text.strip()))
            if c not in out:
                out.append(c)
    return out


def native(im: Image.Image, c: Condition) -> Image.Image:
    """The model-independent part of a condition, applied at the image's own size."""
    if c.perturbation == "jpeg":
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=int(c.severity or 0))
        with Image.open(io.BytesIO(buf.getvalue())) as j:
            return j.convert("RGB")
    if c.perturbation == "blur":
        # gaussian_filter(sigma=(s, s, 0)) per channel, as one pass per image axis (the same numbers, faster)
        sigma = float(c.severity or 0)
        blurred = gaussian_filter1d(gaussian_filter1d(np.asarray(im, dtype=np.float32), sigma, axis=0), sigma, axis=1)
        return Image.fromarray(np.clip(np.rint(blurred), 0, 255).astype(np.uint8))
    return im


def model_input(im: Image.Image, c: Condition, size: int, resize: str = "bilinear") -> np.ndarray:
    """`native(im, c)` → uint8 (3, size, size) for a model of this input size and resize mode (decode_image's).
    Under resize crop, a resize condition scales the whole image down and back up before the centre crop."""
    if c.perturbation == "resize" and resize == "crop":
        w, h = im.size
        f = float(c.severity or 1)
        im = im.resize((max(1, round(w * f)), max(1, round(h * f))), Image.BILINEAR).resize((w, h), Image.BILINEAR)
    elif c.perturbation == "resize":
        small = max(1, round(size * float(c.severity or 1)))
        im = im.resize((small, small), Image.BILINEAR)
    return to_model_size(im, size, resize)
