"""`python -m tune train`."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

from tune.cli.common import (
    add_arch,
    add_data,
    add_no_cache,
    add_out,
    add_seed,
    add_skip_bad_images,
    add_threads,
    add_valid_extra,
    builtin_data,
)
from tune.core import UserError, cache_root
from tune.data.faces import DETECTORS
from tune.data.frames import Preprocess
from tune.data.heldout import for_training
from tune.data.images import load_split
from tune.metrics.classification import needs_heldout
from tune.models.hparams import HParamKind
from tune.models.registry import REGISTRY
from tune.training.config import TrainConfig, options
from tune.training.loop import fit
from tune.training.records import HISTORY, RECORD, WEIGHTS, save_run


def _add_train_options(p: argparse.ArgumentParser) -> None:
    """Flags from the declarations: TrainConfig's options, then every registered architecture's own
    hyperparameters (left unset, an architecture's default applies)."""
    add_data(p, "dataset root (default: the built-in dataset)")
    # Flags other commands take too are declared once, in tune/cli/common.py: here with train's help and default.
    shared: dict[str, Callable[..., None]] = {"--arch": add_arch, "--seed": add_seed, "--threads": add_threads}
    for f in options():
        flag = f.metadata["flag"] or "--" + f.name.replace("_", "-")
        if flag == "--no-cache":  # TrainConfig.use_cache, search's --no-cache
            add_no_cache(p, f.metadata["help"])
        elif flag in shared:
            shared[flag](p, f"{f.metadata['help']} (default: %(default)s)", default=f.default)
        elif isinstance(f.default, bool):
            p.add_argument(flag, dest=f.name, action="store_false" if f.default else "store_true",
                           help=f.metadata["help"])
        else:
            p.add_argument(flag, dest=f.name, type=type(f.default), default=f.default, choices=f.metadata["choices"],
                           help=f"{f.metadata['help']} (default: %(default)s)")
    owners: dict[str, list[str]] = {}
    for arch in REGISTRY.values():
        for name in arch.hparams:
            owners.setdefault(name, []).append(arch.name)
    for name, archs in owners.items():
        spec = next(a.hparams[name] for a in REGISTRY.values() if name in a.hparams)
        kind = {HParamKind.INT: int, HParamKind.FLOAT: float}.get(spec.kind, str)
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None,
                       help=f"{', '.join(archs)}: {spec.help} (default: the architecture's)")
    add_skip_bad_images(p)
    p.add_argument("--video-frames", type=int, default=16, help="frames sampled evenly from each video of the data "
                   "(default: %(default)s; a search space's video: {frames: K})")
    p.add_argument("--faces", choices=DETECTORS, help="crop each frame's (and still image's) face with this offline "
                   "detector before the resize (a search space's faces: {detector: ...}); default: whole frames")
    p.add_argument("--face-margin", type=float, default=1.3, help="with --faces: the square's side as a multiple of "
                   "the face box (default: %(default)s)")
    p.add_argument("--face-size", type=int, default=256, help="with --faces: the crop's side in px (default: "
                   "%(default)s)")
    add_valid_extra(p)


def train_config(a: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the flags describe; an architecture's hyperparameter given to another is refused."""
    flat = {f.name: getattr(a, f.name) for f in options()}
    hp_names = {n for arch in REGISTRY.values() for n in arch.hparams}
    flat.update({n: getattr(a, n) for n in hp_names if getattr(a, n, None) is not None})
    return TrainConfig.from_dict(flat)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="one training run with early stopping (what every trial runs)")
    _add_train_options(p)
    add_out(p, "run folder (default: results/train-ARCH-TIME)")
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    cfg = train_config(a)  # fails fast, before reading any data
    faces = {"detector": a.faces, "margin": a.face_margin, "size": a.face_size} if a.faces else None
    prep = Preprocess.parse({"frames": a.video_frames}, faces)
    if needs_heldout(cfg.monitor) and not a.valid_extra:
        raise UserError(f"--monitor {cfg.monitor} needs held-out validation sources: give --valid-extra DIR [DIR ...]")
    root = (a.data or builtin_data()).absolute()
    cache = cache_root() / "decoded" if cfg.use_cache else None
    train, valid = (load_split(root, s, cfg.image_size, skip_bad=a.skip_bad_images, cache_dir=cache,
                               resize=cfg.resize, prep=prep) for s in ("train", "valid"))
    extra, held_out = for_training(a.valid_extra or [], cfg.image_size, train, valid, root, cache_dir=cache,
                                   skip_bad=a.skip_bad_images, resize=cfg.resize)
    for s in (train, valid, *extra):
        if s.skipped:
            print(f"skipped {len(s.skipped)} bad image(s) in {s.split}")
    out = a.out or Path("results") / f"train-{cfg.arch}-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"training {cfg.arch} on {root}: {len(train)} train / {len(valid)} valid images at {cfg.image_size}px"
          + "".join(f"; held-out {s.split}: {len(s)}" for s in extra))
    result = fit(cfg, train, valid, extra=extra, cache_dir=cache_root() / "features" if cfg.use_cache else None)
    data = {"root": str(root), "train_fingerprint": train.fingerprint, "valid_fingerprint": valid.fingerprint,
            "n_train": len(train), "n_valid": len(valid),
            "skipped": train.skipped + valid.skipped + [p for s in extra for p in s.skipped],
            **({"valid_extra": held_out} if held_out else {})}
    save_run(out, cfg, result, data, valid.y, prep.to_dict())
    b = result.best
    print(f"{result.ended} after {len(result.history)} epochs; best epoch {result.best_epoch}: "
          f"val_loss {b['val_loss']:.4f} val_auc {b['val_auc']:.4f} val_acc {b['val_accuracy']:.4f}"
          + (f" xval_auc {b['xval_auc']:.4f}" if "xval_auc" in b else ""))
    print(f"weights: {result.model.weights_source}; wrote {out / WEIGHTS}, {HISTORY}, {RECORD}")
    return 0
