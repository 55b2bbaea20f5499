"""A trained detector, loaded with its record, scoring images exactly as it was trained to see them.

The one module below finalize, predict, evaluate, export and serve: each of them turns a model
file into probabilities through here, so "how was this model's input made" has one answer.

Accepted model files (each with the record written beside it):
- `results/RUN/models/ARCH.pth` + `ARCH.json` (finalize's winners);
- `results/RUN/finalize/NAME/seedS/best.pth` + `record.json` (every retraining);
- a `train --out` folder's `best.pth` + `record.json`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tune import CLASSES
from tune.core import UserError, file_sha256
from tune.data.frames import Preprocess, model_inputs
from tune.data.images import decode_image, to_float
from tune.metrics.video import DEFAULT_TOPK, aggregate
from tune.models.detector import load_state_dict_file
from tune.training.config import TrainConfig
from tune.training.loop import make_model
from tune.training.records import RECORD, WEIGHTS, ModelRecord

if TYPE_CHECKING:  # names used only in annotations

    from tune.data.frames import Crop
    from tune.models.detector import Detector

BATCH = 64
# The model files every command that loads one accepts (its --model help).
MODEL_FILES = "results/RUN/models/ARCH.pth (its .json beside it) or a train folder's best.pth"


def record_path(model_path: Path) -> Path:
    """models/ARCH.pth → models/ARCH.json; best.pth → record.json in the same folder."""
    model_path = Path(model_path)
    sibling = model_path.with_suffix(".json")

    if sibling.is_file() or model_path.name != WEIGHTS:
        return sibling
    return model_path.parent / RECORD


def probabilities(model: Detector, x: np.ndarray, batch: int = BATCH, *, hflip: bool = False) -> np.ndarray:
    """P(fake) for uint8 images (N, 3, S, S): the full model (frozen prefix included), eval mode.
    hflip: of each image's mirror image (left-right), the other half of flip test-time augmentation."""
    model.eval()
    device = next(model.parameters()).device  # make_model puts it on CUDA when there is one
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            b = to_float(x[i:i + batch]).to(device)
            b = (b.flip(-1) if hflip else b).contiguous(memory_format=torch.channels_last)  # -1: the width axis
            out.append(torch.sigmoid(model(b)).cpu())
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


@dataclass
class LoadedModel:
    """A detector ready to score: its weights, its record and where they came from."""

    model: Detector
    record: ModelRecord
    path: Path
    sha256: str
    threshold: float
    threshold_rule: str
    notes: list[str] = field(default_factory=list)

    @property
    def arch(self) -> str:
        return self.record.arch_name

    @property
    def image_size(self) -> int:
        return int(self.record.config["image_size"])

    @property
    def resize(self) -> str:
        """bilinear (the whole image resized) or crop (its centre at native resolution); older records: bilinear."""
        return str(self.record.config.get("resize", "bilinear"))

    def identity(self) -> dict[str, Any]:
        """Which model answered: enough to find it again (arch, run, trial, file and its hash)."""
        return {"arch": self.arch, "run": self.record.run, "trial": self.record.trial_id,
                "seed": self.record.seed, "path": str(self.path), "sha256": self.sha256}

    @property
    def prep(self) -> Preprocess:
        """How this model's inputs were cut from files: video frames and face crops (whole images before)."""
        return Preprocess.record(self.record.preprocess)

    def inputs(self, path: Path) -> tuple[np.ndarray, list[Crop]]:
        """A file (a video, or an image) as this model's rows, prepared exactly as in training (frames.py)."""
        return model_inputs(path, self.prep, self.image_size, self.resize)

    def video_score(self, p: np.ndarray) -> float:
        """A video's P(fake) from its frames', by the model's own aggregation (video_agg in its config)."""
        c = self.record.config
        return aggregate(p, str(c.get("video_agg", "mean")), int(c.get("video_topk", DEFAULT_TOPK)))

    def decode(self, src: Path | bytes) -> np.ndarray:
        """One image file (or its bytes) → uint8 (3, S, S) at this model's size; ValueError if unreadable."""
        return decode_image(src, self.image_size, self.resize)

    def probabilities(self, x: np.ndarray, batch: int = BATCH) -> np.ndarray:
        return probabilities(self.model, x, batch)

    def label(self, p: float) -> str:
        """Fake at or above the threshold (the same rule as tune.metrics.classification.binary_metrics)."""
        return "" if math.isnan(p) else CLASSES[int(p >= self.threshold)]


def load(path: Path) -> LoadedModel:
    """Load a model file and its record; every mismatch between the two is one UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file not found: {path} (expected {MODEL_FILES})")
    meta_path = record_path(path)
    if not meta_path.is_file():
        raise UserError(f"model record not found: {meta_path} (expected the .json that finalize writes next to "
                        "the .pth, or the record.json of a train folder)")
    try:
        record = ModelRecord.load(meta_path)
        # The state_dict holds every weight, so the backbone is never downloaded again to load it.
        config = dict(record.config)
        if "weights" in config:
            config["weights"] = "none"
        cfg = TrainConfig.from_dict(config)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"bad model record {meta_path}: {type(e).__name__}: {e}") from None
    sha = file_sha256(path)
    expected = record.weights_sha256
    if expected and expected != sha:
        raise UserError(f"{path} does not match its record {meta_path.name}: sha256 {sha[:16]}… but the record "
                        f"says {expected[:16]}… (was the .pth replaced?)")
    notes = []
    if record.threshold is not None:
        threshold, rule = float(record.threshold), record.threshold_rule or "chosen on valid"
    else:
        threshold, rule = 0.5, "0.5 (the record has no valid-chosen threshold)"
        notes.append(f"{meta_path.name} has no threshold chosen on valid; using 0.5")
    model = make_model(cfg)
    state = load_state_dict_file(path)  # torch.load(..., weights_only=True): never unpickles code
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"{path} does not match its record {meta_path.name} (a {cfg.arch}): "
                        f"{str(e).splitlines()[0][:200]}") from None
    return LoadedModel(model.eval(), record, path, sha, threshold, rule, notes)
