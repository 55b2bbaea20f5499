"""What a detector looks at: its input transform, part of the model (so ONNX export, predict, serve and
evaluate all apply it the same way), and the one owner of the input names.

A config's `input` is one name or a stack joined by "+" ("rgb+npr": channels concatenated in that order).
Every transform maps float RGB in [0, 1], (N, 3, H, W), to a fixed number of channels at the same H x W:
- rgb:      the image itself (3 channels; a model with input rgb is built with no transform in front);
- npr:      x - up(down(x)), down and up by 2 nearest-neighbour (Tan et al., CVPR 2024): each pixel minus the
            top-left pixel of its 2x2 block (3 channels; an odd last row or column is its own block);
- highpass: the 3x3 SRM residual [[-1, 2, -1], [2, -4, 2], [-1, 2, -1]] / 4 per colour channel, reflect-padded
            (3 channels);
- dwt:      one level of the orthonormal Haar DWT per colour channel, its high bands LH = (a+b-c-d)/2 (the rows
            differ), HL = (a-b+c-d)/2 (the columns differ) and HH = (a-b-c+d)/2 of each 2x2 block [[a, b], [c, d]],
            upsampled back to H x W by repeating each coefficient over its block (not kept at half resolution, so
            that it stacks with the others); band-major (LH of R, G, B, then HL, then HH: 9 channels). Odd sides
            are padded by repeating the last row or column.

`with_input` fits a built detector to the stack. The transform becomes the first module of the first unit,
so the feature cache's prefix keys (tune/training/cache.py), which hash every unit's structure, change with it.
A model whose stack is not 3 channels gets its first convolution widened: the pretrained RGB kernel repeated
for each group of 3 channels and divided by the number of groups (timm's `adapt_input_conv`), rather than a
learned 1x1 adapter in front of the backbone. A learned adapter would have to train, and nothing trainable
may come before the frozen prefix, so it would leave no frozen prefix and no feature cache; the widened stem
is learned whenever the stem is among the unfrozen units, and cacheable when it is frozen. The backbone's
normalisation stays on the RGB channels; residual channels (zero-mean) are divided by its std only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tune.core import UserError
from tune.models.detector import Normalize

SRM = ((-1.0, 2.0, -1.0), (2.0, -4.0, 2.0), (-1.0, 2.0, -1.0))  # / 4


def rgb(x: torch.Tensor) -> torch.Tensor:
    return x


def up2(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Each value repeated over a 2x2 block, cut to h x w (nearest up-sampling by 2)."""
    return F.interpolate(x, scale_factor=2.0, mode="nearest")[..., :h, :w]


def npr(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    return x - up2(x[..., ::2, ::2], h, w)


def highpass(x: torch.Tensor) -> torch.Tensor:
    k = torch.tensor(SRM, dtype=x.dtype, device=x.device).div(4).expand(x.shape[1], 1, 3, 3)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), k, groups=x.shape[1])


def dwt(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    if h % 2 or w % 2:
        x = F.pad(x, (0, w % 2, 0, h % 2), mode="replicate")
    a, b, c, d = x[..., ::2, ::2], x[..., ::2, 1::2], x[..., 1::2, ::2], x[..., 1::2, 1::2]
    bands = [(a + b - c - d) / 2, (a - b + c - d) / 2, (a - b - c + d) / 2]
    return up2(torch.cat(bands, dim=1), h, w)


@dataclass(frozen=True)
class Input:
    name: str
    channels: int  # per 3-channel RGB image
    fn: Callable[[torch.Tensor], torch.Tensor]
    centred: bool  # zero-mean (a residual): normalised by the backbone's std only
    about: str


INPUTS: dict[str, Input] = {i.name: i for i in (
    Input("rgb", 3, rgb, False, "the RGB image"),
    Input("npr", 3, npr, True, "neighbouring-pixel residual x - up(down(x)), factor 2 nearest (Tan et al. 2024)"),
    Input("highpass", 3, highpass, True, "3x3 SRM high-pass residual per colour channel"),
    Input("dwt", 9, dwt, True, "Haar DWT high bands LH, HL, HH per colour channel, repeated back to full size"),
)}
RESIZE = ("bilinear", "crop")  # how an image becomes S x S: resized whole, or cut at native resolution


def parse_input(value: str) -> tuple[str, ...]:
    """"rgb+npr" → ("rgb", "npr"); an unknown or repeated name is one clear line."""
    names = tuple(n.strip().lower() for n in str(value).split("+"))
    unknown = [n for n in names if n not in INPUTS]
    if unknown or not names or len(set(names)) < len(names):
        what = f"unknown input {unknown[0]!r}" if unknown else "a repeated input"
        raise UserError(f"{what} in input={value!r}: expected one of {', '.join(INPUTS)}, or a stack of them "
                        "joined by + (e.g. rgb+npr)")
    return names


def channels(names: tuple[str, ...]) -> int:
    return sum(INPUTS[n].channels for n in names)


class InputTransform(nn.Module):
    """Float RGB in [0, 1] → the stacked inputs. No weights: its repr names the stack (the cache keys hash it)."""

    def __init__(self, names: tuple[str, ...]) -> None:
        super().__init__()
        self.names = tuple(names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [INPUTS[n].fn(x) for n in self.names]
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)

    def extra_repr(self) -> str:
        return f"input={'+'.join(self.names)}"


def _first(module: nn.Module, kind: type) -> tuple[nn.Module, str, nn.Module] | None:
    """(parent, attribute name, child) of the first submodule of `kind` in `module`, in registration order."""
    for parent in module.modules():
        for name, child in parent.named_children():
            if isinstance(child, kind):
                return parent, name, child
    return None


def with_input(model: nn.Module, value: str) -> nn.Module:
    """The detector fitted to input `value` (in place; returned for chaining). rgb leaves it as built."""
    names = parse_input(value)
    if names == ("rgb",):
        return model
    container = model.frozen if len(model.frozen) else model.body
    first = container[0]
    n = channels(names)
    found = _first(nn.Sequential(first), nn.Conv2d)
    if found is None or found[2].in_channels != 3 or found[2].groups != 1:
        raise UserError(f"input={value}: the model's first layer is not a 3-channel convolution to widen")
    parent, attr, conv = found
    if n != 3:
        old = conv.weight
        groups = -(-n // 3)
        conv.weight = nn.Parameter((old.detach().repeat(1, groups, 1, 1)[:, :n] * (3 / n)).contiguous(),
                                   requires_grad=old.requires_grad)
        conv.in_channels = n
    norm = _first(nn.Sequential(first), Normalize)
    if norm is not None:
        nparent, nattr, nmod = norm
        mean, std = nmod.mean.flatten().tolist(), nmod.std.flatten().tolist()
        means = [m for name in names for m in ([0.0] * INPUTS[name].channels if INPUTS[name].centred else mean)]
        stds = [s for name in names for s in std * (INPUTS[name].channels // 3)]
        setattr(nparent, nattr, Normalize(tuple(means), tuple(stds)).to(nmod.mean.device))
    container[0] = nn.Sequential(InputTransform(names), first)
    return model
