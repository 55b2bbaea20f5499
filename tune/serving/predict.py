"""`python -m tune predict --model results/RUN/models/ARCH.pth IMAGE_OR_FOLDER... [--explain DIR]`

Loads a finalized model (its .pth state_dict and the sibling .json that finalize wrote), scores
images and labels them Fake/Real at the model's own threshold (chosen on the validation split).
A file that cannot be decoded gets an error in its row; it never stops the other images.
`--explain DIR` also writes, per scored image, where the model looked (tune/models/explain.py):
NAME.cam.png (the image the model saw, its Grad-CAM map and P(fake)) and NAME.cam.npy (the signed
map, float32 at the model's input size), plus explain.csv saying which file is which image's.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tune.core import atomic_write_bytes, atomic_write_text
from tune.data.images import IMAGE_EXTS
from tune.data.video import is_video
from tune.inference import LoadedModel
from tune.models import explain


@dataclass
class Prediction:
    path: str
    p_fake: float  # NaN when the image could not be read
    label: str  # "Fake", "Real" or "" when unreadable
    error: str = ""
    # a video: each scored frame's (index, time in s, P(fake)); its p_fake is their aggregation (video_agg)
    frames: list[tuple[int, float, float]] = field(default_factory=list)
    boxes: list[tuple[int, int, int, int] | None] = field(default_factory=list)  # each frame's face box


def collect_images(inputs: list[Path]) -> list[Path]:
    """Files as given (whatever their extension: the user named them), folders scanned for images and videos."""
    found: list[Path] = []
    for p in inputs:
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.is_file() and (f.suffix.lower() in IMAGE_EXTS or is_video(f)))
        else:
            found.append(p)  # a missing file becomes an error row, not a crash
    return found


CHUNK = 256  # images decoded at a time: a folder of any size never sits in memory whole (a multiple of the
# model's batch, so batches hold the same images as when scored all at once, and the numbers are the same)


def predict(loaded: LoadedModel, files: list[Path], explain_to: Path | None = None) -> list[Prediction]:
    """Score the files, CHUNK readable images at a time; with `explain_to`, write each scored image's map and
    overlay there too, then explain.csv listing them all."""
    rows = [Prediction(str(f), math.nan, "") for f in files]
    explained = Explanations(loaded, explain_to) if explain_to is not None else None
    good: list[int] = []
    pixels: list[np.ndarray] = []

    def score() -> None:
        x = np.stack(pixels)
        for i, p in zip(good, loaded.probabilities(x)):
            rows[i].p_fake = float(p)
            rows[i].label = loaded.label(float(p))
        if explained is not None:
            explained.add(x, [rows[i] for i in good])
        good.clear()
        pixels.clear()

    prep = loaded.prep
    for i, f in enumerate(files):
        if prep.touches(f):  # a video, or an image to crop the face from: its own rows, scored at once
            score_file(loaded, f, rows[i], explained)
            continue
        try:
            pixels.append(loaded.decode(f))
            good.append(i)
        except (ValueError, OSError) as e:  # decode_image's ValueError; OSError: missing or unreadable file
            rows[i].error = str(e) if isinstance(e, ValueError) else f"cannot open: {e.strerror or e}"
        if len(pixels) == CHUNK:
            score()
    if pixels:
        score()
    if explained is not None:
        explained.finish()
    return rows


def score_file(loaded: LoadedModel, f: Path, row: Prediction, explained: Explanations | None = None) -> None:
    """A video (its frames' face crops) or a face-cropped image, prepared as the model's training prepared it."""
    try:
        x, crops = loaded.inputs(f)
    except (ValueError, OSError) as e:
        row.error = str(e) if isinstance(e, ValueError) else f"cannot open: {e.strerror or e}"
        return
    p = loaded.probabilities(x)
    row.p_fake = loaded.video_score(p) if is_video(f) else float(p[0])
    row.label = loaded.label(row.p_fake)
    row.frames = [(c.frame, c.time_s, float(q)) for c, q in zip(crops, p, strict=True)]
    row.boxes = [c.box for c in crops]
    if explained is not None:
        explained.add(x, [Prediction(f"{f.stem}-f{c.frame:06d}{f.suffix}", float(q), loaded.label(float(q)))
                          for c, q in zip(crops, p, strict=True)])


class Explanations:
    """NAME.cam.png and NAME.cam.npy per image (NAME: the file's stem, numbered on repeats; the suffix
    keeps an overlay from ever replacing an input image), each written atomically as its chunk is scored,
    then explain.csv."""

    def __init__(self, loaded: LoadedModel, out: Path) -> None:
        self.loaded, self.out = loaded, out
        self.taken: set[str] = set()
        self.index = io.StringIO()
        self.w = csv.writer(self.index, lineterminator="\n")
        self.w.writerow(["path", "p_fake", "label", "overlay", "map"])

    def add(self, x: np.ndarray, rows: list[Prediction]) -> None:
        loaded = self.loaded
        cams = (cam for i in range(0, len(x), explain.BATCH)  # a batch of maps in memory at a time
                for cam in explain.gradcam(loaded.model, loaded.arch, x[i:i + explain.BATCH]).cam)
        for r, image, cam in zip(rows, x, cams):
            name, k = Path(r.path).stem, 1
            while name in self.taken:
                k += 1
                name = f"{Path(r.path).stem}-{k}"
            self.taken.add(name)
            atomic_write_bytes(self.out / f"{name}.cam.png",
                               explain.png(explain.overlay(image, cam, explain.caption(r.p_fake, r.label))))
            atomic_write_bytes(self.out / f"{name}.cam.npy", explain.npy(cam))
            self.w.writerow([r.path, repr(r.p_fake), r.label, f"{name}.cam.png", f"{name}.cam.npy"])

    def finish(self) -> None:
        atomic_write_text(self.out / "explain.csv", self.index.getvalue())


def render_csv(rows: list[Prediction]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "p_fake", "label", "error"])
    for r in rows:
        w.writerow([r.path, "" if math.isnan(r.p_fake) else repr(r.p_fake), r.label, r.error])
        for frame, t, p in r.frames if len(r.frames) > 1 else ():  # a video's frames, after its verdict
            w.writerow([f"{r.path}#frame={frame}&t={t:.3f}", repr(p), "", ""])
    return buf.getvalue()


def render_table(rows: list[Prediction]) -> str:
    width = max([len("path")] + [len(r.path) for r in rows])
    lines = [f"{'path':<{width}}  {'P(fake)':>8}  {'label':<5}  error"]
    for r in rows:
        p = "" if math.isnan(r.p_fake) else f"{r.p_fake:.4f}"
        lines.append(f"{r.path:<{width}}  {p:>8}  {r.label:<5}  {r.error}".rstrip())
        if len(r.frames) > 1:
            lines.append(f"{'':<{width}}  frames: " + " ".join(f"{t:.1f}s:{q:.2f}" for _, t, q in r.frames))
    return "\n".join(lines) + "\n"


