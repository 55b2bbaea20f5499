"""What every detector is made of, and the registry's types (the entries live in their family modules, looked up
in tune/models/registry.py).

Every detector is a `Detector`: a frozen prefix, a trainable body and a head. Pretrained backbones
are cut into *units* (the stem, each block, the head convolution) and a tail (pooling): the last
`unfrozen_blocks` units train, the others form the frozen prefix. Cutting the network this way is
what lets tune/training/cache.py compute the frozen part once per image instead of once per step of every
epoch of every trial, and derive a longer prefix's features from a shorter one's.

Names follow timm: `forward_features(x)` gives the pooled features, `forward_head(f)` the logit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tune.core import UserError
from tune.models.hparams import VALUES, HParamKind

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class DropoutLinear(nn.Linear):
    """Dropout, then a linear layer: the output layer of a head without hidden layers (timm's drop_rate
    before the classifier). One module, so its weights keep the key a plain Linear had there."""

    def __init__(self, in_features: int, out_features: int, p: float) -> None:
        super().__init__(in_features, out_features)
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(nn.functional.dropout(x, self.p, self.training))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, p={self.p}"


def mlp_head(in_features: int, head_sizes: tuple[int, ...], dropout: float) -> nn.Sequential:
    """Hidden layers Linear→ReLU→Dropout, then one logit (the notebook's Dense(128)→Dropout→Dense(1)).
    Dropout comes before the output layer either way: with no hidden layer it is Dropout→Linear."""
    layers: list[nn.Module] = []
    for width in head_sizes:
        layers += [nn.Linear(in_features, width), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        in_features = width
    layers.append(nn.Linear(in_features, 1) if head_sizes or not dropout else DropoutLinear(in_features, 1, dropout))
    return nn.Sequential(*layers)


class Detector(nn.Module):
    """frozen (no grad, eval mode) → body (trainable) → pooled features → head → one logit (P(fake))."""

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
        """The frozen prefix's output: what the feature cache stores."""
        with torch.no_grad():
            return self.frozen(x)

    def forward_cached(self, z: torch.Tensor) -> torch.Tensor:
        """Logits from the frozen prefix's output (what a training step runs)."""
        return self.forward_head(self.body(z))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features of images in [0, 1] (timm's meaning: everything before the classifier)."""
        return self.body(self.encode(x))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features).squeeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_with_grad(self, x: torch.Tensor) -> torch.Tensor:
        """forward(), with autograd through the frozen prefix too: what explanations run (Grad-CAM needs
        gradients at a layer that may lie inside the prefix). Training and inference keep encode's no_grad."""
        return self.forward_head(self.body(self.frozen(x)))


def split_detector(units: list[nn.Module], tail: nn.Module, features: int, *, unfrozen_blocks: int,
                   head_sizes: tuple[int, ...], dropout: float, weights_source: str) -> Detector:
    """Freeze all but the last `unfrozen_blocks` units. With none unfrozen the tail (pooling) is frozen
    too, so the cacheable output is one feature vector per image; otherwise it trains with the body."""
    if not 0 <= unfrozen_blocks <= len(units):
        raise UserError(f"unfrozen_blocks={unfrozen_blocks} out of range: this backbone has {len(units)} "
                        f"units (stem, blocks, head convolution; expected 0..{len(units)})")
    cut = len(units) - unfrozen_blocks
    frozen, body = nn.Sequential(*units[:cut]), nn.Sequential(*units[cut:])
    (frozen if unfrozen_blocks == 0 else body).append(tail)
    return Detector(frozen, body, mlp_head(features, head_sizes, dropout), weights_source=weights_source)


def last_unit(model: Detector) -> nn.Module:
    """The last unit before the pooling tail of a `split_detector` model: the backbone's last spatial
    feature map, every backbone's default Grad-CAM target layer (the registry's `cam_layer`)."""
    return [*model.frozen, *model.body][-2]  # the units, then the tail, whichever side of the cut they are


def count_params(model: nn.Module) -> tuple[int, int]:
    """(trainable, frozen) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return trainable, frozen


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


# --------------------------------------------------------------------------- the registry's types
def parse_head_sizes(value: Any) -> tuple[int, ...]:
    """Accept [256, 64], (256, 64), "256,64", "256-64" or "" (no hidden layer)."""
    if isinstance(value, str):
        parts = [p for p in value.replace("-", ",").split(",") if p.strip()]
        try:
            return tuple(int(p) for p in parts)
        except ValueError:
            raise UserError(f"bad head_sizes {value!r}: expected comma-separated widths like 256,64") from None
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return tuple(value)
    raise UserError(f"bad head_sizes {value!r}: expected a list of integer widths")



@dataclass(frozen=True)
class HParam:
    """One architecture hyperparameter: its type, default and valid range (checked, never swallowed)."""

    kind: HParamKind  # one of VALUES
    default: Any
    low: float | None = None
    high: float | None = None  # inclusive
    help: str = ""

    def __post_init__(self) -> None:
        if self.kind not in VALUES:
            raise ValueError(f"an architecture's hyperparameter is one of {[str(k) for k in VALUES]}, "
                             f"got {self.kind!r}")
        object.__setattr__(self, "kind", HParamKind(self.kind))


@dataclass(frozen=True)
class Arch:
    """One registered architecture: everything any module needs to know about it."""

    name: str
    builder: Callable[..., Detector]  # builder(**hparams) -> Detector
    hparams: dict[str, HParam]
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # inputs are RGB in [0, 1], then (x - mean) / std
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    weights: tuple[str, ...] = ("none",)  # the sources it accepts, besides a local file
    about: str = ""
    color: str = "tab:purple"  # in every plot
    min_size: Callable[[dict[str, Any]], int] = field(default=lambda hp: 32)
    # The layer whose feature maps Grad-CAM weighs (tune/models/explain.py); None: this architecture has none.
    cam_layer: Callable[[Detector], nn.Module] | None = last_unit

    @property
    def pretrained(self) -> bool:
        return "weights" in self.hparams and self.hparams["weights"].default != "none"

    def preprocessing(self) -> dict[str, Any]:
        return {"range": [0.0, 1.0], "mean": list(self.mean), "std": list(self.std), "resize": "bilinear, square"}
