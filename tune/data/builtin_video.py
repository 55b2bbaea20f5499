"""A built-in, offline, deterministic set of face videos: `python -m tune demo-data --videos --out DIR`.

Two face photos ship inside our dependencies (scikit-image's astronaut, matplotlib's Grace Hopper). Each clip is
one of them filmed by a moving, zooming virtual camera: a square window around the face whose centre and side
drift from a random start to a random end over the clip, with its own mirror, colour gain and sensor noise, and
the frames written as an mp4 (OpenCV, mp4v). A Fake clip is the same, with every frame's face region replaced by
the generator zoo's synthesis (tune/data/zoo/, `spectral` by default: no network, so a set takes seconds) and
blended back through a soft ellipse over the face, as face swaps do, with the colours matched to the original.

Leakage: each clip is drawn once and lands in one split; its file name (its id) is unique over the whole set.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tune.core import UserError
from tune.data.builtin import SPLITS, load_sources, split_counts
from tune.data.zoo import family

MANIFEST = "demo_videos.json"  # marks a folder as ours, so a rerun may replace it
FACES = {"skimage.astronaut": (179, 60, 89, 113), "matplotlib.grace_hopper.jpg": (176, 118, 181, 219)}  # MTCNN's
DEFAULTS = {"n_per_class": 20, "frames": 24, "size": 128, "fps": 8}
GENERATOR = "spectral"


def _window(photo: np.ndarray, cx: float, cy: float, side: float, size: int) -> np.ndarray:
    """The square window of the photo centred at (cx, cy), resized to size (edge pixels repeated outside)."""
    h, w = photo.shape[:2]
    grid = np.linspace(-side / 2, side / 2, 2 * size)  # sampled at twice the size, then resized: no aliasing
    ys = np.clip((cy + grid).round().astype(int), 0, h - 1)
    xs = np.clip((cx + grid).round().astype(int), 0, w - 1)
    return np.asarray(Image.fromarray(photo[ys][:, xs]).resize((size, size), Image.BILINEAR))


def _ellipse(size: int, box: tuple[float, float, float, float], feather: float) -> np.ndarray:
    """A soft ellipse over the face box (x, y, w, h in frame pixels), 1 inside, fading to 0 over `feather`."""
    x, y, w, h = box
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    d = np.hypot((xx - (x + w / 2)) / (w * 0.55), (yy - (y + h / 2)) / (h * 0.6))
    return np.clip((1 - d) / feather, 0, 1)[..., None]


def _fake(frame: np.ndarray, render: object, box: tuple[float, float, float, float], alpha: float) -> np.ndarray:
    x = torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        y = render(x)  # type: ignore[operator]
    dims = (2, 3)  # colours matched to the original, as face-swap pipelines do
    y = ((y - y.mean(dims, keepdim=True)) / (y.std(dims, keepdim=True) + 1e-6) * x.std(dims, keepdim=True)
         + x.mean(dims, keepdim=True)).clamp(0, 1)
    synth = y[0].permute(1, 2, 0).numpy() * 255
    m = _ellipse(frame.shape[0], box, 0.35) * alpha
    return (frame * (1 - m) + synth * m).round().clip(0, 255).astype(np.uint8)


def write_mp4(path: Path, frames: list[np.ndarray], fps: int) -> None:
    """RGB uint8 frames as an mp4 (mp4v), the container every OpenCV build here writes and reads."""
    import cv2  # heavy optional dependency (opencv-python-headless): only videos need it

    h, w = frames[0].shape[:2]
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not out.isOpened():
        raise UserError(f"cannot write {path}: this OpenCV build has no mp4v encoder")
    try:
        for f in frames:
            out.write(np.ascontiguousarray(f[..., ::-1]))
    finally:
        out.release()


def clip(rng: np.random.Generator, photos: dict[str, np.ndarray], fake: bool, frames: int, size: int,
         render: object) -> list[np.ndarray]:
    """One clip's RGB frames: a camera drifting and zooming over one face; a Fake's face region re-synthesized."""
    name = sorted(photos)[int(rng.integers(len(photos)))]
    photo, (fx, fy, fw, fh) = photos[name], FACES[name]
    if rng.random() < 0.5:
        photo, fx = np.ascontiguousarray(photo[:, ::-1]), photo.shape[1] - fx - fw
    face = max(fw, fh)
    start, end = ([fx + fw / 2 + rng.uniform(-0.3, 0.3) * face, fy + fh / 2 + rng.uniform(-0.3, 0.3) * face,
                   face * rng.uniform(1.5, 2.5)] for _ in range(2))
    gain = rng.uniform(0.85, 1.15, size=3)
    noise = rng.uniform(1.0, 4.0)
    alpha = rng.uniform(0.4, 0.9)
    out = []
    for t in np.linspace(0, 1, frames):
        cx, cy, side = (a + (b - a) * t for a, b in zip(start, end, strict=True))
        f = _window(photo, cx, cy, side, size).astype(np.float64) * gain
        f = (f + rng.normal(0, noise, f.shape)).clip(0, 255).astype(np.uint8)
        if fake:  # the face box in frame pixels: where it sits in the window
            scale = size / side
            box = ((fx - (cx - side / 2)) * scale, (fy - (cy - side / 2)) * scale, fw * scale, fh * scale)
            f = _fake(f, render, box, alpha)
        out.append(f)
    return out


def generate_face_videos(out: Path, *, n_per_class: int = DEFAULTS["n_per_class"], frames: int = DEFAULTS["frames"],
                         size: int = DEFAULTS["size"], fps: int = DEFAULTS["fps"], seed: int = 0) -> Path:
    """Write OUT/{train,valid,test}/{Fake,Real}/clipNNNN.mp4 (70/15/15 clips per class) and the manifest."""
    if n_per_class < 2 or frames < 2 or not 32 <= size <= 512:
        raise UserError(f"face videos: need n_per_class >= 2, frames >= 2 and size in 32..512 (got {n_per_class}, "
                        f"{frames}, {size})")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not (out / MANIFEST).is_file():
            raise UserError(f"{out} exists and was not made by demo-data --videos; choose an empty --out")
        shutil.rmtree(out)
    sources = load_sources()
    photos = {n: sources[n] for n in FACES if n in sources}
    if not photos:
        raise UserError("no face photo found (need scikit-image or matplotlib installed)")
    rng = np.random.default_rng(seed)
    render = family(GENERATOR).make(np.zeros((1, 8, 8, 3), np.uint8), seed, np.random.default_rng(seed + 1))
    number = 0
    for split, n in split_counts(n_per_class).items():
        for cls in ("Fake", "Real"):
            d = out / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for _ in range(n):
                write_mp4(d / f"clip{number:04d}.mp4", clip(rng, photos, cls == "Fake", frames, size, render), fps)
                number += 1
    (out / MANIFEST).write_text(json.dumps({"n_per_class": n_per_class, "frames": frames, "size": size, "fps": fps,
                                            "seed": seed, "generator": GENERATOR, "splits": list(SPLITS)}) + "\n")
    return out
