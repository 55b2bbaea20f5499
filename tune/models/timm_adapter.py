"""Any timm backbone as a detector: its net cut into a stem, blocks and a head conv (units the training can
freeze from the bottom), checked against timm's own forward. `timm/NAME` names any timm backbone, made into an
entry on first use (`timm_arch`); EfficientNet-Lite (efficientnet_lite.py) is built through here too."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import torch
from torch import nn

from tune.core import UserError
from tune.models import weights as W
from tune.models.detector import IMAGENET_MEAN, IMAGENET_STD, Arch, Detector, HParam, Normalize, last_unit
from tune.models.detector import split_detector as _split
from tune.models.hparams import HParamKind
from tune.models.register import REGISTRY, TIMM_PREFIX, head_params


def lookup(name: str) -> Arch:
    """A registered entry, or the timm/NAME one (tune.models.registry.get_arch, without its error for others)."""
    return REGISTRY[name] if name in REGISTRY else timm_arch(name)


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
    a = lookup(arch)
    units, tail, features = timm_units(net, arch)
    units[0] = nn.Sequential(Normalize(a.mean, a.std), *units[0])
    return _split(units, tail, features, unfrozen_blocks=unfrozen_blocks, head_sizes=head_sizes,
                  dropout=dropout, weights_source=source)


def _timm_hub(arch: str, model_name: str) -> nn.Module:
    import timm  # heavy: timm only when a timm architecture is built

    how = "place the weights as a state_dict file and use weights: file:PATH"
    if W.offline():
        raise W.WeightsUnavailable(f"{arch}: hub weights need a download and TUNE_OFFLINE is set; {how}")
    try:
        return timm.create_model(model_name, pretrained=True)
    except Exception as e:  # noqa: BLE001 - no network, no such pretrained tag...: all mean "cannot download"
        raise W.WeightsUnavailable(f"{arch}: timm could not get pretrained {model_name} "
                                   f"({type(e).__name__}: {str(e)[:120]}); {how}") from None


def build_timm(arch: str, model_name: str, *, unfrozen_blocks: int, head_sizes: tuple[int, ...], dropout: float,
               weights: str,
               packaged: Callable[[nn.Module], tuple[dict[str, torch.Tensor], str]] | None = None) -> Detector:
    import timm  # heavy: timm only when a timm architecture is built

    kind = W.check_kind(weights, lookup(arch).weights, arch)
    if kind == "hub":
        net, source = _timm_hub(arch, model_name), f"hub: timm {model_name}"
    else:
        net, source = timm.create_model(model_name, pretrained=False), "none (random init, as the space asked)"
        if kind in ("packaged", "file"):
            sd, source = packaged(net) if kind == "packaged" and packaged else W.load_file(W.parse(weights)[1], arch)
            W.load_strict(net, sd, arch, weights)
    return timm_detector(arch, net, unfrozen_blocks=unfrozen_blocks, head_sizes=head_sizes, dropout=dropout,
                         source=source)


@cache
def timm_arch(name: str) -> Arch:
    import timm  # heavy: timm only when a timm architecture is looked up

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

    return Arch(name, builder, {**head_params(len(units)), "weights": HParam(HParamKind.WEIGHTS, "hub")},
                mean=tuple(cfg.get("mean", IMAGENET_MEAN)), std=tuple(cfg.get("std", IMAGENET_STD)),
                weights=("hub", "none"), about=f"timm's {model_name}: weights from timm's hub, a file, or none.",
                cam_layer=last_unit)  # its last stage's last block, or the head conv when forward_features has it
