"""The one typed config passed down from the CLI or a Ray trial to the training code."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from tune.utils import UserError


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run's numbers (besides the data).

    Defaults are the original notebook's recipe: 224 px, Adam lr 1e-4, patience 3.
    """

    arch: str = "custom_cnn"
    # optimisation
    lr: float = 1e-4
    weight_decay: float = 0.0
    batch_size: int = 32
    epochs: int = 30
    patience: int = 3
    seed: int = 0
    image_size: int = 224
    # model (build_model ignores the fields that do not belong to `arch`)
    head_sizes: tuple[int, ...] = (128,)
    dropout: float = 0.5
    conv_blocks: int = 3
    base_width: int = 32
    unfrozen_blocks: int = 0
    weights: str = "imagenet"  # "imagenet", "none" or a path to a .pth state_dict
    # train-time augmentation; blur and JPEG follow Wang et al. 2020 and are off by default
    hflip: bool = True
    blur_prob: float = 0.0
    jpeg_prob: float = 0.0
    # execution
    threads: int = 0  # 0 = leave torch's default
    use_cache: bool = True  # decoded-image and frozen-backbone caches (see tune/cache.py)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["head_sizes"] = list(self.head_sizes)
        d.pop("extra")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UserError(f"unknown training option(s) {unknown}; expected some of {sorted(names)}")
        d = dict(d)
        if "head_sizes" in d:
            d["head_sizes"] = parse_head_sizes(d["head_sizes"])
        return cls(**d).validated()

    def replace(self, **changes: Any) -> TrainConfig:
        return self.from_dict({**self.to_dict(), **changes})

    def validated(self) -> TrainConfig:
        checks = [
            (self.lr > 0, "lr must be > 0"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.patience >= 1, "patience must be >= 1"),
            (self.image_size >= 32, "image_size must be >= 32"),
            (0 <= self.dropout < 1, "dropout must be in [0, 1)"),
            (self.conv_blocks >= 1, "conv_blocks must be >= 1"),
            (self.arch != "custom_cnn" or self.image_size >= 2**self.conv_blocks,
             f"custom_cnn halves the image {self.conv_blocks} times: image_size must be >= 2**conv_blocks "
             f"= {2**self.conv_blocks}"),
            (self.base_width >= 1, "base_width must be >= 1"),
            (self.unfrozen_blocks >= 0, "unfrozen_blocks must be >= 0"),
            (0 <= self.blur_prob <= 1 and 0 <= self.jpeg_prob <= 1, "blur_prob/jpeg_prob must be in [0, 1]"),
            (all(h >= 1 for h in self.head_sizes), "head_sizes must be positive widths"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UserError(f"bad training option: {msg}")
        return self


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
