"""torchvision's MobileNetV2 (the notebook's transfer model), with torchvision's ImageNet weights."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tune.models import weights as W
from tune.models.detector import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Detector,
    HParam,
    Normalize,
    last_unit,
    load_state_dict_file,
)
from tune.models.detector import split_detector as _split
from tune.models.hparams import HParamKind
from tune.models.register import REGISTRY, head_params, register_arch


def _torchvision_imagenet(arch: str) -> tuple[dict[str, torch.Tensor], str]:
    """torchvision's ImageNet weights: from the torch cache, else downloaded once into it."""
    from torchvision.models import MobileNet_V2_Weights  # heavy: torchvision only when this architecture is built

    url = MobileNet_V2_Weights.IMAGENET1K_V1.url
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if path.is_file():
        return load_state_dict_file(path), f"hub: torchvision IMAGENET1K_V1 ({path.name})"
    how = f"put {path.name} (from {url}) at {path}, or use weights: file:PATH"
    if W.offline():
        raise W.WeightsUnavailable(f"{arch}: ImageNet weights are not in the torch cache and TUNE_OFFLINE is set; "
                                   f"{how}")
    try:
        sd = MobileNet_V2_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
    except Exception as e:  # noqa: BLE001 - no network, DNS failure, proxy...: all mean "cannot download"
        raise W.WeightsUnavailable(f"{arch}: cannot download ImageNet weights ({type(e).__name__}); {how}") from None
    return sd, f"hub: torchvision IMAGENET1K_V1 ({path.name}, downloaded)"


@register_arch(
    hparams={**head_params(19),
             "weights": HParam(HParamKind.WEIGHTS, "hub", help="hub (torchvision ImageNet), none, file:PATH")},
    mean=IMAGENET_MEAN, std=IMAGENET_STD, weights=("hub", "none"), color="tab:orange",
    cam_layer=last_unit,  # features[18]: the 1x1 convolution to 1280 channels, the last spatial map
    about="torchvision MobileNetV2 (the notebook's transfer model): 19 feature blocks, ImageNet weights from "
          "torchvision's weights API (14 MB, BSD-3; downloaded once into the torch cache).")
def mobilenet_v2(*, unfrozen_blocks: int, head_sizes: tuple[int, ...], dropout: float, weights: str) -> Detector:
    # heavy: torchvision only when this architecture is built
    from torchvision.models import mobilenet_v2 as tv_mobilenet_v2

    kind = W.check_kind(weights, ("hub", "none"), "mobilenet_v2")
    net = tv_mobilenet_v2(weights=None)
    sd, source = None, "none (random init, as the space asked)"
    if kind == "hub":
        sd, source = _torchvision_imagenet("mobilenet_v2")
    elif kind == "file":
        sd, source = W.load_file(W.parse(weights)[1], "mobilenet_v2")
    if sd is not None:
        # torchvision's own state_dict (features.*, classifier.*); the classifier is replaced by our head.
        feats = {k[len("features."):]: v for k, v in sd.items() if k.startswith("features.")}
        W.load_strict(net.features, feats, "mobilenet_v2 features", weights)
    a = REGISTRY["mobilenet_v2"]
    units = [nn.Sequential(Normalize(a.mean, a.std), net.features[0]), *net.features[1:]]
    return _split(units, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), net.last_channel,
                  unfrozen_blocks=unfrozen_blocks, head_sizes=head_sizes, dropout=dropout, weights_source=source)
