"""evaluate's videos: each video (and, with a face-cropping model, each still image) scored from its crops, made
exactly as the model's training made them (tune.inference.LoadedModel.inputs' crops_of), under every condition; a
video's P(fake) is its frames' aggregated by the model's own video_agg. The frames' scores are kept, so evaluate
reports both levels: the videos (the main tables) and their frames (a second evaluation, "Per frame")."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from tune.data.frames import Crop, crops_of
from tune.data.perturb import Condition, model_input, native
from tune.data.video import is_video

if TYPE_CHECKING:
    from tune.inference import LoadedModel


def needs_crops(path: Path, models: dict[str, LoadedModel]) -> bool:
    """A video always; a still image when some model crops faces (the plain image path cannot score it)."""
    return is_video(path) or any(m.prep.faces is not None for m in models.values())


@dataclass
class FileScores:
    """One file's P(fake) per (model, condition), and its frames' (one row per crop of the first model's
    settings) when every model cuts frames the same way."""

    p: dict[tuple[str, str], float]
    frames: list[str] = field(default_factory=list)  # "PATH#frame=N"
    frame_p: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)


def score_file(path: Path, models: dict[str, LoadedModel], conditions: list[Condition]) -> FileScores:
    """Every model's P(fake) of one file under every condition. ValueError/OSError when it cannot be read or no
    frame holds a face (the caller lists it with the other bad files)."""
    crops: dict[str, list[Crop]] = {}
    for m in models.values():
        key = repr(m.prep.to_dict())
        if key not in crops:
            crops[key] = crops_of(path, m.prep)
    shared = len(crops) == 1
    out = FileScores({})
    for name, m in models.items():
        cs = crops[repr(m.prep.to_dict())]
        for c in conditions:
            x = np.stack([model_input(native(Image.fromarray(k.rgb), c), c, m.image_size, m.resize) for k in cs])
            p = m.probabilities(x)
            out.p[name, c.name] = m.video_score(p) if is_video(path) else float(p[0])
            if shared and is_video(path):
                out.frame_p[name, c.name] = p
        if shared and is_video(path):
            out.frames = [f"{path}#frame={k.frame}" for k in cs]
    return out

