"""Model registry and `build_model(name, **hparams)` factory (timm style).

Every detector is a `Detector`: a frozen prefix (`encode`), a trainable body and a head.
Splitting the network this way is what lets tune/cache.py compute the frozen part once per
image instead of once per step of every epoch of every trial.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tune.utils import UserError, file_sha256

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def mlp_head(in_features: int, head_sizes: tuple[int, ...], dropout: float) -> nn.Sequential:
    """Hidden layers Linear→ReLU→Dropout, then one logit (the notebook's Dense(128)→Dropout→Dense(1))."""
    layers: list[nn.Module] = []
    for width in head_sizes:
        layers += [nn.Linear(in_features, width), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        in_features = width
    layers.append(nn.Linear(in_features, 1))
    return nn.Sequential(*layers)


class Detector(nn.Module):
    """frozen (no grad, eval mode) → body (trainable) → head → one logit per image (P(fake))."""

    def __init__(self, frozen: nn.Sequential, body: nn.Sequential, head: nn.Sequential, *,
                 weights_source: str = "n/a") -> None:
        super().__init__()
        self.frozen, self.body, self.head = frozen, body, head
        self.weights_source = weights_source
        for p in self.frozen.parameters():
            p.requires_grad_(False)
        # A new module is in train mode: without this, encoding before the first model.train()/eval()
        # (the feature cache does) would use batch statistics and move the frozen BatchNorm's running stats.
        self.frozen.eval()

    def train(self, mode: bool = True) -> Detector:
        super().train(mode)
        # Frozen BatchNorm must not update its running statistics under model.train().
        self.frozen.eval()
        return self

    @property
    def has_frozen_params(self) -> bool:
        return any(True for _ in self.frozen.parameters())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.frozen(x)

    def forward_features(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(z)).squeeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(self.encode(x))


def count_params(model: nn.Module) -> tuple[int, int]:
    """(trainable, frozen) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return trainable, frozen


# --------------------------------------------------------------------------- custom CNN
def custom_cnn(*, conv_blocks: int = 3, base_width: int = 32, head_sizes: tuple[int, ...] = (128,),
               dropout: float = 0.5, **_: Any) -> Detector:
    """Conv3x3→ReLU→MaxPool blocks doubling the width (32/64/128 by default), then dense layers.

    Inputs stay in [0, 1] as in the notebook (Rescaling(1/255)). Adaptive pooling to 4×4 keeps
    some spatial layout while making the head independent of the image size.
    """
    layers: list[nn.Module] = []
    in_ch = 3
    for i in range(conv_blocks):
        out_ch = base_width * 2**i
        layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        in_ch = out_ch
    layers += [nn.AdaptiveAvgPool2d(4), nn.Flatten()]
    return Detector(nn.Sequential(), nn.Sequential(*layers), mlp_head(in_ch * 16, head_sizes, dropout),
                    weights_source="random init")


# --------------------------------------------------------------------------- MobileNetV2
MOBILENET_BLOCKS = 19  # len(torchvision mobilenet_v2().features)


def imagenet_cache_path() -> Path:
    from torchvision.models import MobileNet_V2_Weights

    url = MobileNet_V2_Weights.IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Load a .pth state_dict without ever unpickling code (weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file not found: {path} (expected a .pth state_dict)")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle payloads, corrupt files: all refused the same way
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"refused to load {path}: not a plain tensor state_dict ({first[:200]})") from None
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{path} is not a state_dict (expected a dict of name -> tensor)")
    return sd


def _imagenet_state_dict() -> tuple[dict[str, torch.Tensor] | None, str]:
    """torchvision's ImageNet weights: from the torch cache, else downloaded once into it."""
    from torchvision.models import MobileNet_V2_Weights

    path = imagenet_cache_path()
    if path.is_file():
        return load_state_dict_file(path), f"imagenet ({path.name})"
    try:
        if os.environ.get("TUNE_OFFLINE"):
            raise ConnectionError("TUNE_OFFLINE is set")
        sd = MobileNet_V2_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
        return sd, f"imagenet ({path.name}, downloaded)"
    except Exception as e:  # noqa: BLE001 - no network, DNS failure, proxy...: all mean "offline"
        warnings.warn(
            f"could not get ImageNet weights for MobileNetV2 ({type(e).__name__}: {e}); place "
            f"{Path(MobileNet_V2_Weights.IMAGENET1K_V1.url).name} at {path} (or pass --weights FILE). "
            "Continuing with RANDOM weights; the run record says so.", stacklevel=2)
        return None, "random (imagenet weights unavailable offline)"


def mobilenet_v2(*, unfrozen_blocks: int = 0, head_sizes: tuple[int, ...] = (128,), dropout: float = 0.5,
                 weights: str = "imagenet", **_: Any) -> Detector:
    """torchvision MobileNetV2, base frozen except its last `unfrozen_blocks` blocks of `features`."""
    from torchvision.models import mobilenet_v2 as tv_mobilenet_v2

    if not 0 <= unfrozen_blocks <= MOBILENET_BLOCKS:
        raise UserError(f"unfrozen_blocks={unfrozen_blocks} out of range: MobileNetV2 has "
                        f"{MOBILENET_BLOCKS} feature blocks (expected 0..{MOBILENET_BLOCKS})")
    net = tv_mobilenet_v2(weights=None)
    if weights == "imagenet":
        sd, source = _imagenet_state_dict()
    elif weights in ("none", "random", ""):
        sd, source = None, "random init (weights=none)"
    else:
        sd = load_state_dict_file(Path(weights))
        source = f"file {Path(weights).name} sha256:{file_sha256(weights)[:16]}"
    if sd is not None:
        # Accept torchvision's own state_dict (features.*, classifier.*); the classifier is replaced.
        feats = {k[len("features."):]: v for k, v in sd.items() if k.startswith("features.")}
        try:
            missing, unexpected = net.features.load_state_dict(feats, strict=False)
        except RuntimeError as e:  # right names, wrong shapes
            first = next((ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()), str(e))
            raise UserError(f"weights {weights!r} do not fit MobileNetV2 features: {first[:300]}") from None
        if missing or unexpected:
            raise UserError(f"weights {weights!r} do not fit MobileNetV2 features: {len(missing)} missing keys "
                            f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (expected torchvision's keys)")
    cut = MOBILENET_BLOCKS - unfrozen_blocks
    pool = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    frozen = nn.Sequential(Normalize(IMAGENET_MEAN, IMAGENET_STD), *net.features[:cut])
    body = nn.Sequential(*net.features[cut:])
    if unfrozen_blocks == 0:
        frozen.extend(pool)  # then the cacheable output is a 1280-vector per image
    else:
        body.extend(pool)
    return Detector(frozen, body, mlp_head(net.last_channel, head_sizes, dropout), weights_source=source)


MODELS: dict[str, Callable[..., Detector]] = {"custom_cnn": custom_cnn, "mobilenet_v2": mobilenet_v2}
# Which hyperparameters each architecture takes (the search space checks against this).
ARCH_PARAMS: dict[str, tuple[str, ...]] = {
    "custom_cnn": ("conv_blocks", "base_width", "head_sizes", "dropout"),
    "mobilenet_v2": ("unfrozen_blocks", "head_sizes", "dropout", "weights"),
}


def check_arch(name: str) -> None:
    if name not in MODELS:
        raise UserError(f"unknown architecture {name!r}; valid: {', '.join(sorted(MODELS))}")


def build_model(name: str, **hparams: Any) -> Detector:
    check_arch(name)
    return MODELS[name](**hparams)


def list_archs() -> list[str]:
    """Every registered architecture name (tests and tools iterate over this, never over literals)."""
    return sorted(MODELS)
