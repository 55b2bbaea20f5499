"""The architecture registry's machinery: `@register_arch` adds an entry to REGISTRY (timm's register_model).

An entry holds the builder, its own hyperparameters (types, defaults, ranges), its input
preprocessing, its weight sources, how it splits into a frozen prefix and trainable units, and
its Grad-CAM target layer (`cam_layer`: by default the last unit before pooling, see models.Arch).
Each family of architectures registers its entries in its own module (custom_cnn.py, mobilenet.py,
efficientnet_lite.py; timm_adapter.py makes `timm/NAME` entries on use); tune/models/registry.py imports
them all and looks architectures up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tune.models.detector import Arch, Detector, HParam
from tune.models.hparams import HParamKind

REGISTRY: dict[str, Arch] = {}
DEFAULT_ARCH = "custom_cnn"  # the notebook's first model: what `train` trains unless told otherwise
TIMM_PREFIX = "timm/"


def register_arch(*, hparams: dict[str, HParam], **info: Any) -> Callable[[Callable[..., Detector]], Any]:
    def wrap(builder: Callable[..., Detector]) -> Callable[..., Detector]:
        REGISTRY[builder.__name__] = Arch(builder.__name__, builder, hparams, **info)
        return builder
    return wrap


def head_params(unfrozen_high: int | None) -> dict[str, HParam]:
    """The hyperparameters every backbone + head detector shares."""
    out = {"head_sizes": HParam(HParamKind.WIDTHS, (128,), help="hidden widths of the head, e.g. 256,64"),
           "dropout": HParam(HParamKind.FLOAT, 0.5, 0.0, 0.95,
                             help="dropout after each hidden layer of the head, or before its output layer when it "
                                  "has none")}
    if unfrozen_high is not None:
        out["unfrozen_blocks"] = HParam(HParamKind.INT, 0, 0, unfrozen_high,
                                           help="trainable units counted from the top (0 = head only)")
    return out
