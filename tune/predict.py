"""`python -m tune predict --model results/RUN/models/ARCH.pth IMAGE_OR_FOLDER...`

Loads a finalized model (its .pth state_dict and the sibling .json that finalize wrote), scores
images and labels them Fake/Real at the model's own threshold (chosen on the validation split).
A file that cannot be decoded gets an error in its row; it never stops the other images.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

from tune import inference
from tune.inference import MODEL_FILES, LoadedModel
from tune.utils import UserError, atomic_write_text


@dataclass
class Prediction:
    path: str
    p_fake: float  # NaN when the image could not be read
    label: str  # "Fake", "Real" or "" when unreadable
    error: str = ""


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


def predict(loaded: LoadedModel, files: list[Path]) -> list[Prediction]:
    import numpy as np

    rows = [Prediction(str(f), math.nan, "") for f in files]
    good: list[int] = []
    pixels: list[np.ndarray] = []
    for i, f in enumerate(files):
        try:
            pixels.append(loaded.decode(f))
            good.append(i)
        except (ValueError, OSError) as e:  # decode_image's ValueError; OSError: missing or unreadable file
            rows[i].error = str(e) if isinstance(e, ValueError) else f"cannot open: {e.strerror or e}"
    if good:
        probs = loaded.probabilities(np.stack(pixels))
        for i, p in zip(good, probs):
            rows[i].p_fake = float(p)
            rows[i].label = loaded.label(float(p))
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
    loaded = inference.load(a.model)
    for note in loaded.notes:
        print(f"note: {note}")
    files = collect_images(a.images)
    if not files:
        raise UserError(f"no images found in {', '.join(map(str, a.images))} "
                        "(expected image files, or folders with .jpg/.jpeg/.png/.bmp/.webp files)")
    rows = predict(loaded, files)
    bad = sum(1 for r in rows if r.error)
    if a.csv:
        atomic_write_text(a.csv, render_csv(rows))
        print(f"wrote {len(rows)} prediction(s) to {a.csv}")
    else:
        print(render_table(rows), end="")
    fakes = sum(1 for r in rows if r.label == "Fake")
    print(f"{len(rows) - bad} image(s) scored ({fakes} Fake X; {bad} unreadable")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="score images with a finalized model (P(fake) and a Fake/Real label)")
    p.add_argument("--model", type=Path, required=True, help=MODEL_FILES)
    p.add_argument("images", type=Path, nargs="+", metavar="IMAGE_OR_FOLDER", help="image files or folders")
    p.add_argument("--csv", type=Path, help="write path,p_fake,label,error to this file instead of a table")
    p.set_defaults(func=cmd_predict)
