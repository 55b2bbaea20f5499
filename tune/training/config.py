"""The one typed config passed down from the CLI or a Ray trial to the training code.

Training options are declared once, here: each field's metadata gives its help text (the CLI's
flags are generated from it) and whether a search space may sample it. An architecture's own
hyperparameters (head sizes, unfrozen depth, weights...) are declared by its registry entry
(tune/models/registry.py and its family modules) and carried in `hparams`; a config is flat when written or
read, as in params.json.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from tune.core import UserError
from tune.data.augment import AugSpec, parse_augment
from tune.metrics.classification import search_metrics
from tune.metrics.video import AGGREGATIONS, DEFAULT_TOPK
from tune.models.inputs import parse_input
from tune.models.registry import DEFAULT_ARCH, check_hparams, get_arch


def opt(default: Any, help: str, *, searchable: bool = True, flag: str | None = None,
        choices: tuple[str, ...] | None = None) -> Any:
    """A training option: default, help text, whether a space may sample it, its CLI flag if not --NAME,
    and for a named choice the names it accepts."""
    return field(default=default, metadata={"help": help, "searchable": searchable, "flag": flag,
                                            "choices": choices})


# Options whose old spelling an earlier version recorded (params.json, record.json). At their default
# they meant "off" and are dropped; any other value cannot be reproduced by this version.
RETIRED = {"blur_prob": 0.0, "jpeg_prob": 0.0}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run's numbers (besides the data).

    Defaults are the original notebook's recipe: 224 px, Adam lr 1e-4, patience 3 on val loss, flips only.
    """

    arch: str = opt(DEFAULT_ARCH, "architecture (see `python -m tune archs`)", searchable=False)
    # optimisation
    lr: float = opt(1e-4, "learning rate of the head (the trainable backbone units get lr x backbone_lr_mult)")
    backbone_lr_mult: float = opt(1.0, "learning rate of the trainable units before the head, as a multiple of "
                                       "lr (a pretrained backbone's unfrozen blocks; the custom CNN's convolutions)")
    optimizer: str = opt("adam", "adam (the notebook's; weight decay as an L2 term) or adamw (decoupled weight "
                                 "decay)", choices=("adam", "adamw"))
    weight_decay: float = opt(0.0, "weight decay (L2 with adam, decoupled with adamw)")
    schedule: str = opt("constant", "learning-rate schedule over the max epochs: constant, or cosine (down to 0 "
                                    "at the last epoch)", choices=("constant", "cosine"))
    warmup_epochs: float = opt(0.0, "linear learning-rate warm-up over this many epochs, before the schedule")
    label_smoothing: float = opt(0.0, "training targets become y(1-s)+s/2 (validation loss keeps the true labels)")
    batch_size: int = opt(32, "images per step")
    # how long, and which epoch is kept: one rule for train, search, finalize and reproduce
    epochs: int = opt(30, "max epochs", searchable=False)
    patience: int = opt(3, "early stopping: epochs without a better monitored value", searchable=False)
    monitor: str = opt("val_loss", "the validation number that picks the kept epoch, stops early after patience "
                                   "epochs without a better value, and is a search trial's score: val_loss (the "
                                   "notebook's rule) or a metric such as val_auc (in a search: the space's "
                                   "metric unless it says otherwise); with held-out validation sources also "
                                   "xval_*, mean_* or min_*/max_* (tune/metrics/classification.py)",
                                   choices=tuple(search_metrics()))
    video_agg: str = opt("mean", "a video's P(fake) from its frames': mean, max, or topk (the mean of the video_topk "
                                 "highest); valid and test videos are scored with it (tune/metrics/video.py)",
                         choices=AGGREGATIONS)
    video_topk: int = opt(DEFAULT_TOPK, "k of video_agg topk")
    seed: int = opt(0, "seed of initialisation, order, flips, augmented views and dropout", searchable=False)
    image_size: int = opt(224, "images are resized (or cropped, see resize) to this square side", searchable=False)
    # what the model sees (tune/models/inputs.py): part of the model, so exported and served with it
    input: str = opt("rgb", "the model's input: rgb, npr, highpass or dwt, or a stack joined by + (e.g. rgb+npr); "
                            "computed inside the model from the RGB image")
    resize: str = opt("bilinear", "how an image becomes image_size square: bilinear (resized whole) or crop (native "
                                  "resolution: random crops for training, the centre crop everywhere else)",
                      choices=("bilinear", "crop"))
    # train-time augmentation (tune/data/augment.py); validation and test images are never augmented
    hflip: bool = opt(True, "random horizontal flips of training images; --no-hflip turns them off",
                      flag="--no-hflip")
    augment: str = opt("none", "augmentations of the training views, comma-separated: crop, jitter, blur, jpeg "
                               "(or all, or none)")
    aug_strength: float = opt(1.0, "augmentation strength in [0, 1] (1: the standard settings, Wang et al. 2020 "
                                   "for blur and JPEG)")
    aug_views: int = opt(1, "augmented views per training image: epoch e trains on view e mod V (cached once); "
                            "0 draws a fresh view every epoch (live training only)")
    # execution
    threads: int = opt(0, "torch threads (0 = torch's choice)", searchable=False)
    workers: int = opt(-1, "threads that prepare batches ahead of the step (read, augment, mirror): -1 = from "
                           "threads (half of them on the CPU, so none for one thread; all on CUDA), 0 = inline in "
                           "the step (the numbers are the same either way)", searchable=False)
    precision: str = opt("auto", "arithmetic of the forward passes: fp32, bf16 or fp16 autocast (fp16 with a "
                                 "gradient scaler), or auto (bf16 on a GPU that has it, else fp16; fp32 on the "
                                 "CPU, where only fp32 reproduces exactly)", choices=("auto", "bf16", "fp16", "fp32"))
    use_cache: bool = opt(True, "cache decoded images and frozen-backbone features; --no-cache computes them "
                                "live at every use", searchable=False, flag="--no-cache")
    cache_dtype: str = opt("float32", "how frozen-prefix features are stored on disk: float32, or float16 (half "
                                      "the disk; read back as float32; set by a search space's cache_dtype)",
                           searchable=False, choices=("float32", "float16"))
    # the architecture's own hyperparameters, checked and completed by its registry entry
    hparams: dict[str, Any] = field(default_factory=dict, compare=True)

    def __post_init__(self) -> None:
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
        d = dict(d)
        for key, off in RETIRED.items():
            if key in d and d.pop(key) not in (off, None):
                raise UserError(f"{key} was recorded by an earlier version (random {key[:-5]} at every step); "
                                "this version augments with `augment` and `aug_views` instead and cannot "
                                "reproduce it")
        arch = d.pop("arch", cls.__dataclass_fields__["arch"].default)
        names = {f.name for f in options()}
        own = {k: d.pop(k) for k in list(d) if k in names}
        arch_params = get_arch(arch).hparams
        unknown = sorted(k for k in d if k not in arch_params)
        if unknown:
            raise UserError(f"unknown training option(s) {unknown} for {arch}; expected some of "
                            f"{sorted(names | set(arch_params))}")
        return cls(arch=arch, **own, hparams=d).validated()

    @classmethod
    def from_written(cls, d: dict[str, Any]) -> TrainConfig:
        """A config that a result file holds (a comparison.json row's), as any version wrote it: options added
        since take their defaults (what they meant then), and keys this version does not know (a retired option,
        a later version's) are left alone. An architecture or a value this version refuses is a UserError."""
        arch = d.get("arch", cls.__dataclass_fields__["arch"].default)
        names = {f.name for f in options()} | set(get_arch(arch).hparams)
        return cls.from_dict({k: v for k, v in d.items() if k in names})

    @property
    def aug(self) -> AugSpec:
        """The training views' augmentation (its random draws are seeded by the run's seed)."""
        return AugSpec(parse_augment(self.augment), float(self.aug_strength), int(self.seed),
                       crop=int(self.image_size) if self.resize == "crop" else 0)

    def replace(self, **changes: Any) -> TrainConfig:
        return self.from_dict({**self.to_dict(), **changes})

    def validated(self) -> TrainConfig:
        min_size = get_arch(self.arch).min_size(self.hparams)
        parse_augment(self.augment)  # an unknown augmentation is one clear line
        parse_input(self.input)  # so is an unknown input
        if self.resize == "crop" and "crop" in parse_augment(self.augment):
            raise UserError(f"bad training option: augment={self.augment!r} with resize crop: augment's crop resizes "
                            "a random crop back, and resize crop never resamples a training pixel; leave crop out")
        checks = [
            (self.lr > 0, "lr must be > 0"),
            (self.backbone_lr_mult > 0, f"backbone_lr_mult must be > 0 (got {self.backbone_lr_mult}); freeze "
                                        "units with unfrozen_blocks instead"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.warmup_epochs >= 0, "warmup_epochs must be >= 0"),
            (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.patience >= 1, "patience must be >= 1"),
            (self.image_size >= 32, "image_size must be >= 32"),
            (self.image_size >= min_size, f"{self.arch} needs image_size >= {min_size} with these hyperparameters "
                                          f"(got {self.image_size})"),
            (0 <= self.aug_strength <= 1, f"aug_strength must be in [0, 1] (got {self.aug_strength})"),
            (self.aug_views >= 0, f"aug_views must be >= 0 (got {self.aug_views}; 0 = a fresh view every epoch)"),
            *((getattr(self, f.name) in f.metadata["choices"],
               f"{f.name} must be one of {', '.join(f.metadata['choices'])} (got {getattr(self, f.name)!r})")
              for f in options() if f.metadata["choices"]),
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
