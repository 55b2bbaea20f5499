"""`python -m tune predict --model results/RUN/models/ARCH.pth IMAGE_OR_FOLDER...`

Loads a finalized model (its .pth state_dict and the sibling .json that finalize wrote), scores
images and labels them Fake/Real at the model's own threshold (chosen on the validation split).
A file that cannot be decoded gets an error in its row; it never stops the other images.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tune import CLASSES
from tune.config import TrainConfig
from tune.utils import UserError, atomic_write_text

if TYPE_CHECKING:  # numpy/torch/PIL are imported on use, so `python -m tune --help` stays fast
    import numpy as np

    from tune.models import Detector

BATCH = 64


@dataclass
class Prediction:
    path: str
    p_fake: float  # NaN when the image could not be read
    label: str  # "Fake", "Real" or "" when unreadable
    error: str = ""


def probabilities(model: Detector, x: np.ndarray, batch: int = BATCH) -> np.ndarray:
    """P(fake) for uint8 images (N, 3, S, S): the full model (frozen prefix included), eval mode."""
    import numpy as np
    import torch

    from tune.data import to_float

    model.eval()
    device = next(model.parameters()).device  # make_model puts it on CUDA when there is one
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            b = to_float(x[i:i + batch]).to(device).contiguous(memory_format=torch.channels_last)
            out.append(torch.sigmoid(model(b)).cpu())
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


def load_model(path: Path) -> tuple[Detector, dict[str, Any]]:
    """The model and its metadata. weights="none": the state_dict holds every weight, so no download."""
    from tune.models import load_state_dict_file
    from tune.train import make_model

    path = Path(path)
    meta_path = path.with_suffix(".json")
    if not meta_path.is_file():
        raise UserError(f"model metadata not found: {meta_path} (expected the .json that `finalize` writes "
                        "next to the .pth)")
    try:
        meta = json.loads(meta_path.read_text())
        cfg = TrainConfig.from_dict({**meta["config"], "weights": "none"})
        threshold = float(meta["threshold"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"bad model metadata {meta_path}: {type(e).__name__}: {e}") from None
    model = make_model(cfg)
    state = load_state_dict_file(path)  # torch.load(..., weights_only=True): never unpickles code
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"{path} does not fit a {cfg.arch} built from {meta_path.name}: "
                        f"{str(e).splitlines()[0][:200]}") from None
    meta["threshold"] = threshold
    return model.eval(), meta


def collect_images(inputs: list[Path]) -> list[Path]:
    """Files as given (whatever their extension: the user named them), folders scanned for images."""
    from tune.data import IMAGE_EXTS

    found: list[Path] = []
    for p in inputs:
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
        else:
            found.append(p)  # a missing file becomes an error row, not a crash
    return found


def predict(model: Detector, meta: dict[str, Any], files: list[Path]) -> list[Prediction]:
    import numpy as np

    from tune.data import decode_image

    size = int(meta["config"]["image_size"])
    threshold = float(meta["threshold"])
    rows = [Prediction(str(f), math.nan, "") for f in files]
    good: list[int] = []
    pixels: list[np.ndarray] = []
    for i, f in enumerate(files):
        try:
            pixels.append(decode_image(f, size))
            good.append(i)
        except (ValueError, OSError) as e:  # decode_image's ValueError; OSError: missing or unreadable file
            rows[i].error = str(e) if isinstance(e, ValueError) else f"cannot open: {e.strerror or e}"
    if good:
        probs = probabilities(model, np.stack(pixels))
        for i, p in zip(good, probs):
            rows[i].p_fake = float(p)
            rows[i].label = CLASSES[int(p >= threshold)]  # same rule as tune.metrics.binary_metrics
    return rows


def render_csv(rows: list[Prediction]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "p_fake", "label", "error"])
    for r in rows:
        w.writerow([r.path, "" if math.isnan(r.p_fake) else repr(r.p_fake), r.label, r.error])
    return buf.getvalue()


def render_table(rows: list[Prediction]) -> str:
    width = max([len("path")] + [len(r.path) for r in rows])
    lines = [f"{'path':<{width}}  {'P(fake)':>8}  {'label':<5}  error"]
    for r in rows:
        p = "" if math.isnan(r.p_fake) else f"{r.p_fake:.4f}"
        lines.append(f"{r.path:<{width}}  {p:>8}  {r.label:<5}  {r.error}".rstrip())
    return "\n".join(lines) + "\n"


def cmd_predict(a: argparse.Namespace) -> int:
    model, meta = load_model(a.model)
    files = collect_images(a.images)
    if not files:
        raise UserError(f"no images found in {', '.join(map(str, a.images))} "
                        "(expected image files, or folders with .jpg/.jpeg/.png/.bmp/.webp files)")
    rows = predict(model, meta, files)
    bad = sum(1 for r in rows if r.error)
    if a.csv:
        atomic_write_text(a.csv, render_csv(rows))
        print(f"wrote {len(rows)} prediction(s) to {a.csv}")
    else:
        print(render_table(rows), end="")
    fakes = sum(1 for r in rows if r.label == "Fake")
    print(f"{len(rows) - bad} image(s) scored ({fakes} Fake at threshold {meta['threshold']:.4f}, chosen on the "
          f"validation split); {bad} unreadable")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="score images with a finalized model (P(fake) and a Fake/Real label)")
    p.add_argument("--model", type=Path, required=True, help="results/RUN/models/ARCH.pth (its .json beside it)")
    p.add_argument("images", type=Path, nargs="+", metavar="IMAGE_OR_FOLDER", help="image files or folders")
    p.add_argument("--csv", type=Path, help="write path,p_fake,label,error to this file instead of a table")
    p.set_defaults(func=cmd_predict)
