"""The one typed config passed down from the CLI or a Ray trial to the training code.

Training options are declared once, here: each field's metadata gives its help text (the CLI's
flags are generated from it) and whether a search space may sample it. An architecture's own
hyperparameters (head sizes, unfrozen depth, weights...) are declared by its registry entry
(tune/archs.py) and carried in `hparams`; a config is flat when written or read, as in params.json.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from tune.archs import DEFAULT_ARCH
from tune.utils import UserError


def opt(default: Any, help: str, *, searchable: bool = True, flag: str | None = None) -> Any:
    """A training option: default, help text, whether a space may sample it, and its CLI flag if not --NAME."""
    return field(default=default, metadata={"help": help, "searchable": searchable, "flag": flag})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run's numbers (besides the data).

    Defaults are the original notebook's recipe: 224 px, Adam lr 1e-4, patience 3.
    """

    arch: str = opt(DEFAULT_ARCH, "architecture (see `python -m tune archs`)", searchable=False)
    lr: float = opt(1e-4, "Adam learning rate")
    weight_decay: float = opt(0.0, "Adam weight decay")
    batch_size: int = opt(32, "images per step")
    epochs: int = opt(30, "max epochs", searchable=False)
    patience: int = opt(3, "early stopping: epochs without a lower validation loss", searchable=False)
    seed: int = opt(0, "seed of initialisation, order, augmentation and dropout", searchable=False)
    image_size: int = opt(224, "images are resized to this square side", searchable=False)
    # train-time augmentation; blur and JPEG follow Wang et al. 2020 and are off by default
    hflip: bool = opt(True, "random horizontal flips", flag="--no-hflip")
    blur_prob: float = opt(0.0, "probability of a random Gaussian blur (sigma 0.1-3)")
    jpeg_prob: float = opt(0.0, "probability of a random JPEG re-compression (quality 30-100)")
    # execution
    threads: int = opt(0, "torch threads (0 = torch's choice)", searchable=False)
    use_cache: bool = opt(True, "decoded-image and frozen-backbone caches", searchable=False, flag="--no-cache")
    # the architecture's own hyperparameters, checked and completed by its registry entry
    hparams: dict[str, Any] = field(default_factory=dict, compare=True)

    def __post_init__(self) -> None:
        from tune.archs import check_hparams

        object.__setattr__(self, "hparams", check_hparams(self.arch, self.hparams))

    def __getattr__(self, name: str) -> Any:  # cfg.unfrozen_blocks etc.: the arch's hyperparameters
        hp = self.__dict__.get("hparams", {})
        if name in hp:
            return hp[name]
        raise AttributeError(f"{self.__dict__.get('arch')!r} config has no option {name!r}")

    @classmethod
    def of(cls, **flat: Any) -> TrainConfig:
        """TrainConfig.of(arch=NAME, unfrozen_blocks=2, lr=1e-3): options and hyperparameters alike."""
        return cls.from_dict(flat)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in options()}
        d.update({k: list(v) if isinstance(v, tuple) else v for k, v in self.hparams.items()})
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """A flat dict (params.json, a record, the CLI) → config; unknown keys are refused by name."""
        from tune.archs import get_arch

        d = dict(d)
        arch = d.pop("arch", cls.__dataclass_fields__["arch"].default)
        names = {f.name for f in options()}
        own = {k: d.pop(k) for k in list(d) if k in names}
        arch_params = get_arch(arch).hparams
        unknown = sorted(k for k in d if k not in arch_params)
        if unknown:
            raise UserError(f"unknown training option(s) {unknown} for {arch}; expected some of "
                            f"{sorted(names | set(arch_params))}")
        return cls(arch=arch, **own, hparams=d).validated()

    def replace(self, **changes: Any) -> TrainConfig:
        return self.from_dict({**self.to_dict(), **changes})

    def validated(self) -> TrainConfig:
        from tune.archs import get_arch

        min_size = get_arch(self.arch).min_size(self.hparams)
        checks = [
            (self.lr > 0, "lr must be > 0"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.patience >= 1, "patience must be >= 1"),
            (self.image_size >= 32, "image_size must be >= 32"),
            (self.image_size >= min_size, f"{self.arch} needs image_size >= {min_size} with these hyperparameters "
                                          f"(got {self.image_size})"),
            (0 <= self.blur_prob <= 1 and 0 <= self.jpeg_prob <= 1, "blur_prob/jpeg_prob must be in [0, 1]"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UserError(f"bad training option: {msg}")
        return self


def options() -> list[dataclasses.Field]:
    """The training options (every field but `hparams`), in declaration order."""
    return [f for f in dataclasses.fields(TrainConfig) if f.name != "hparams"]


def searchable_options() -> tuple[str, ...]:
    return tuple(f.name for f in options() if f.metadata["searchable"])
