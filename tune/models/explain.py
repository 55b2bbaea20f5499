"""Class-activation maps: where a detector looked when it scored an image as Fake (Grad-CAM).

Grad-CAM (Selvaraju et al., 2017) weighs each feature map of one layer by the mean gradient of the
class score over that map, and sums them: the result is positive where the layer's features raise
the score. The score here is the detector's one logit, whose sigmoid is P(fake), so every map is
for the class Fake. Captum's `LayerGradCam` computes it (docs/explanations.md, "Why did it say Fake?", says why
Captum and not pytorch-grad-cam), at the layer the architecture's registry entry names
(`cam_layer`; by default the last unit before pooling, the backbone's last spatial feature map).

The input is the one inference uses (the same decode, size and resize; the normalisation is inside
the model), and the map is upsampled bilinearly to that size, so it lies over the image the model
saw. Maps are signed: > 0 raises P(fake), < 0 lowers it. Overlays show the positive part, as the
Grad-CAM paper does, scaled by the map's own maximum.

`Detector.forward` runs the frozen prefix without autograd (the feature cache relies on it), so
explanations run `Detector.forward_with_grad` in a pass of their own; scoring is left as it was.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from tune.core import UserError
from tune.data.images import to_float
from tune.models.registry import get_arch

if TYPE_CHECKING:  # names used only in annotations (captum and matplotlib load on use)
    from torch import nn

    from tune.models.detector import Detector

METHOD = "Grad-CAM (Captum LayerGradCam) of the Fake logit"
BATCH = 32  # images per backward pass
DISPLAY = 224  # overlays are at least this many pixels wide: small inputs are enlarged by a whole factor
ALPHA = 0.6  # the heat map's opacity where the map is at its maximum (0 where it is <= 0)


class NoTargetLayer(UserError):
    """The architecture (at this input size) has no spatial layer for Grad-CAM."""


@dataclass
class Maps:
    cam: np.ndarray  # float32 (N, S, S): the signed Grad-CAM map over the input, > 0 raises P(fake)
    layer: str  # the target layer's name in the model, e.g. "frozen.17"
    grid: tuple[int, int]  # the layer's spatial size: how coarse the map really is


def target_layer(model: Detector, arch: str) -> tuple[str, nn.Module]:
    """(name, module) of the architecture's declared Grad-CAM layer inside this model."""
    pick = get_arch(arch).cam_layer
    if pick is None:
        raise NoTargetLayer(f"{arch} declares no Grad-CAM target layer (cam_layer in its "
                            "tune/models/registry.py entry), so it cannot be explained")
    layer = pick(model)
    name = next((n for n, m in model.named_modules() if m is layer), None)
    if name is None:
        raise NoTargetLayer(f"{arch}: its cam_layer is not a layer of the model, so it cannot be explained")
    return name, layer


def gradcam(model: Detector, arch: str, x: np.ndarray, batch: int = BATCH) -> Maps:
    """Grad-CAM maps of uint8 images (N, 3, S, S) at the model's input size, for the class Fake."""
    from captum.attr import LayerAttribution, LayerGradCam  # heavy: captum only when a model is explained

    name, layer = target_layer(model, arch)
    model.eval()
    device = next(model.parameters()).device
    size = tuple(x.shape[-2:])
    method = LayerGradCam(model.forward_with_grad, layer)
    cams, grid = [], (0, 0)
    with torch.enable_grad():
        for i in range(0, len(x), batch):
            b = to_float(x[i:i + batch]).to(device)
            a = method.attribute(b)  # the logit is one number per image: no target index needed
            if a.dim() != 4 or a.shape[2] * a.shape[3] < 2:
                raise NoTargetLayer(f"{arch}: its Grad-CAM layer {name} gives {tuple(a.shape)[2:] or 'no'} cells at "
                                    f"{size[0]} px, not a spatial map of at least 2 cells; explain a model trained "
                                    "at a larger image size")
            grid = (int(a.shape[2]), int(a.shape[3]))
            cams.append(LayerAttribution.interpolate(a, size, interpolate_mode="bilinear")[:, 0].detach().cpu())
    cam = torch.cat(cams).numpy() if cams else np.zeros((0, *size))
    return Maps(cam.astype(np.float32), name, grid)


def check(model: Detector, arch: str, size: int) -> Maps:
    """Fail with one line, before any work, when this model cannot be explained at its input size."""
    return gradcam(model, arch, np.full((1, 3, size, size), 128, np.uint8))


# --------------------------------------------------------------------------- pictures
def heat(cam: np.ndarray) -> np.ndarray:
    """The positive part of a map scaled to [0, 1] by its maximum (all 0 when nothing raises P(fake))."""
    pos = np.maximum(cam, 0)
    top = float(pos.max()) if pos.size else 0.0
    return (pos / top if top > 0 else pos).astype(np.float32)


def overlay(image: np.ndarray, cam: np.ndarray, caption: str | None = None) -> np.ndarray:
    """uint8 RGB (H, W, 3): the model's input image (3, S, S), enlarged by a whole factor to at least
    DISPLAY pixels, under the map's heat (jet colours, opaque where the map is highest), with an optional
    caption strip below (e.g. the verdict)."""
    from matplotlib import colormaps  # heavy: matplotlib only when a map is drawn

    h = heat(cam)
    colours = colormaps["jet"](h)[..., :3]
    a = (ALPHA * h)[..., None]
    rgb = image.transpose(1, 2, 0).astype(np.float32) / 255
    out = Image.fromarray((np.clip((1 - a) * rgb + a * colours, 0, 1) * 255).round().astype(np.uint8))
    scale = max(1, math.ceil(DISPLAY / image.shape[-1]))
    out = out.resize((out.width * scale, out.height * scale), Image.NEAREST)  # the pixels the model saw, enlarged
    if caption:
        caption += "" if h.any() else " (no region raises it)"
        strip = max(18, out.width // 12)
        framed = Image.new("RGB", (out.width, out.height + strip), (20, 20, 20))
        framed.paste(out, (0, 0))
        font = ImageFont.load_default(size=round(strip * 0.7))
        ImageDraw.Draw(framed).text((6, out.height + strip // 2), caption, fill=(255, 255, 255), font=font,
                                    anchor="lm")
        out = framed
    return np.asarray(out)


def caption(p_fake: float, label: str) -> str:
    return f"P(fake) {p_fake:.3f}: {label}"


def png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def npy(cam: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, cam.astype(np.float32))
    return buf.getvalue()
