"""What a training run leaves behind, written and read one way: the per-epoch history, the run record,
the weights, and the valid and test predictions (train --out folders and finalize's seed folders alike)."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tune.core import (
    UserError,
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    file_sha256,
    known,
    library_versions,
    plain,
    read_json,
)
from tune.metrics.classification import HELDOUT, METRICS, VIDEO, youden_threshold
from tune.training.config import TrainConfig

if TYPE_CHECKING:

    from tune.data.images import ImageSet
    from tune.training.loop import FitResult

# What one training leaves in its folder: a `train --out` folder, and each of finalize's seed folders.
WEIGHTS = "best.pth"  # the state_dict
HISTORY = "history.csv"  # one row per epoch
RECORD = "record.json"  # everything else: config, seed, data fingerprints, weights source, versions
PREDICTIONS = "predictions.csv"  # finalize's seed folders only: P(fake) of every test image, plain and flipped
VALID_PREDICTIONS = "valid_predictions.csv"  # the same of every valid image: each variant's threshold is chosen there

HISTORY_FIELDS = ["epoch", "train_loss", "val_loss", *(f"val_{k}" for k in METRICS), "lr", "epoch_time",
                  "best_epoch", "ended"]


def history_csv(history: list[dict[str, Any]]) -> str:
    """One row per epoch; a training with held-out validation sources also gets their xval_ columns."""
    held = [k for k in dict.fromkeys(k for row in history for k in row) if k.startswith((VIDEO, HELDOUT))]
    fields = HISTORY_FIELDS[:3 + len(METRICS)] + held + HISTORY_FIELDS[3 + len(METRICS):]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(history)
    return buf.getvalue()


# --------------------------------------------------------------------------- a model's record
@dataclass
class ModelRecord:
    """What one trained model is, beside its weights: a `train --out` folder's record.json, each finalize seed's
    record.json and an exported models/ARCH.json are all this one record (the exported one adds its choice)."""

    config: dict[str, Any]  # tune.training.config.TrainConfig.to_dict
    seed: int = 0
    data: dict[str, Any] = field(default_factory=dict)  # fingerprints and root of the data it saw
    weights_source: str = ""
    weights_sha256: str | None = None
    threshold: float | None = None  # chosen on valid (Youden's J); None: 0.5 applies
    threshold_rule: str | None = None
    best_epoch: int | None = None
    best: dict[str, Any] = field(default_factory=dict)  # the kept epoch's row
    ended: str | None = None
    epochs_run: int | None = None
    cache: str | None = None
    trainable_params: int | None = None
    frozen_params: int | None = None
    threads: int | None = None
    device: str = "cpu"
    # how a file became the model's inputs: video frames and face crops (tune.data.frames.Preprocess.to_dict);
    # predict, serve and evaluate prepare their inputs the same way. None: whole images (a record from before)
    preprocess: dict[str, Any] | None = None
    precision: str | None = None  # the arithmetic that ran (fp32, bf16, fp16); None: recorded before it was a choice
    versions: dict[str, str] = field(default_factory=dict)
    # finalize's retrainings
    name: str | None = None  # finalize's model name: ARCH, or ARCH-baseline
    kind: str | None = None  # tuned or baseline
    trial_id: str | None = None
    run: str | None = None
    metric: str | None = None
    valid_score: float | None = None
    test: dict[str, Any] | None = None  # {rule: binary_metrics} on the test split, read once
    node_id: str | None = None  # the Ray node that retrained it, on a cluster (None: the finalize's own machine)
    # an exported winner (models/ARCH.json)
    arch: str | None = None
    chosen_by: str | None = None
    source: str | None = None  # the finalize seed folder it was copied from, relative to the run folder

    @property
    def arch_name(self) -> str:
        return str(self.config["arch"])

    @classmethod
    def load(cls, path: Path) -> ModelRecord:
        """Either schema: models/ARCH.json before one record named the test metrics test_metrics."""
        d = read_json(path)
        if "test_metrics" in d and "test" not in d:
            d["test"] = d.pop("test_metrics")
        if "config" not in d:
            raise UserError(f"{path} is not a model record (no config)")
        return known(cls, d)

    def save(self, path: Path) -> None:
        atomic_write_json(path, self.to_plain())

    def to_plain(self) -> dict[str, Any]:
        return plain(self)


def run_record(cfg: TrainConfig, result: FitResult, data: dict[str, Any],
               y_valid: np.ndarray | None = None) -> ModelRecord:
    """Everything about a training run but its weights. With the valid labels it also records the
    threshold that a model file is used at (Youden's J on valid, as finalize chooses it)."""
    threshold = {} if y_valid is None else {"threshold": youden_threshold(y_valid, result.val_probs),
                                            "threshold_rule": "Youden's J maximised on the validation split"}
    return ModelRecord(**threshold, config=cfg.to_dict(), seed=cfg.seed, data=data,
                       weights_source=result.model.weights_source, cache=result.cache_mode,
                       best_epoch=result.best_epoch, ended=result.ended, epochs_run=len(result.history),
                       best=result.best, trainable_params=result.trainable_params, frozen_params=result.frozen_params,
                       versions=library_versions(), threads=torch.get_num_threads(),
                       device=str(next(result.model.parameters()).device), precision=result.precision)


def save_training(out: Path, result: FitResult) -> None:
    """out/best.pth (the state_dict, as CPU tensors so it loads on a machine without the training GPU) and
    out/history.csv (one row per epoch)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(out / WEIGHTS, {k: v.detach().cpu() for k, v in result.model.state_dict().items()})
    atomic_write_text(out / HISTORY, history_csv(result.history))


def save_run(out: Path, cfg: TrainConfig, result: FitResult, data: dict[str, Any],
             y_valid: np.ndarray | None = None, preprocess: dict[str, Any] | None = None) -> ModelRecord:
    """out/best.pth (state_dict), out/history.csv (per epoch), out/record.json (everything else; `preprocess`:
    how videos and faces became its inputs, tune.data.frames.Preprocess.to_dict)."""
    record = run_record(cfg, result, data, y_valid)
    record.preprocess = preprocess
    save_training(out, result)
    record.weights_sha256 = file_sha256(out / WEIGHTS)
    record.save(out / RECORD)
    return record


# The columns of a predictions file: P(fake) of each image, and of its mirror image (flip test-time augmentation).
# Files written before flips were scored have no p_fake_hflip; readers of the plain column never need it.
PLAIN, FLIPPED = "p_fake", "p_fake_hflip"


def predictions_csv(images: ImageSet, p: np.ndarray, p_hflip: np.ndarray | None = None) -> str:
    """One line per image: path, label, P(fake) and, when given, P(fake) of the flipped image."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    columns = [p] if p_hflip is None else [p, p_hflip]
    w.writerow(["path", "label", PLAIN, FLIPPED][:2 + len(columns)])
    for path, y, *qs in zip(images.paths, images.y, *columns):
        w.writerow([path, int(y), *(repr(float(q)) for q in qs)])  # repr: exact
    return buf.getvalue()


def prediction_columns(path: Path) -> list[str]:
    with open(path, newline="") as f:
        return next(csv.reader(f), [])


def read_predictions(path: Path, column: str = PLAIN) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(paths, labels, the column's P(fake)); a file without that column is one UserError."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and column not in rows[0]:
        raise UserError(f"{path} has no {column} column (written before flip test-time augmentation was scored; "
                        "run finalize again to add it)")
    return ([r["path"] for r in rows], np.array([int(r["label"]) for r in rows]),
            np.array([float(r[column]) for r in rows]))
