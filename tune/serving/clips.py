"""Serving a video: an uploaded clip becomes the model's rows as training made them (tune.inference.LoadedModel.inputs:
K frames spaced evenly, each frame's face crop), and the answer is the clip's verdict with each frame's score over
time and its face box. Limits: the upload's size (serve --max-bytes, as for images) and its duration
(serve --max-video-s, read from the container before any frame is decoded)."""

from __future__ import annotations

import base64
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw

from tune.data.video import VIDEO_EXTS, probe, read_frames

if TYPE_CHECKING:
    import numpy as np

    from tune.data.frames import Crop
    from tune.inference import LoadedModel

MAX_VIDEO_S = 120.0  # serve --max-video-s default: a clip longer than this is refused (413)
VIDEO_TYPES = ("application/octet-stream",)  # accepted besides video/* and multipart/form-data


class ClipRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Clip:
    x: np.ndarray  # the model's rows, one per frame with a face
    crops: list[Crop]
    duration_s: float
    n_frames: int
    first: np.ndarray | None = None  # the first scored frame, RGB (H, W, 3): where the page draws the face box


def boxed_png(frame: np.ndarray, box: tuple[int, int, int, int] | None, width: int = 320) -> bytes:
    """A frame with its face box drawn (the box the crop was cut around), scaled to `width` px, as PNG."""
    im = Image.fromarray(frame)
    scale = width / im.width
    im = im.resize((width, max(1, round(im.height * scale))), Image.BILINEAR)
    if box is not None:
        x, y, w, h = (v * scale for v in box)
        ImageDraw.Draw(im).rectangle((x, y, x + w, y + h), outline=(255, 214, 0), width=3)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def suffix_of(name: str) -> str:
    """The upload's extension when it is a video's (OpenCV picks the demuxer by content, the name only helps)."""
    s = Path(name).suffix.lower()
    return s if s in VIDEO_EXTS else ".mp4"


def prepare_clip(loaded: LoadedModel, data: bytes, name: str, max_s: float) -> Clip:
    """Decode and crop an uploaded clip (in a worker thread); ClipRefused with the HTTP status when it cannot be."""
    fd, tmp = tempfile.mkstemp(prefix="tune-clip-", suffix=suffix_of(name))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            n, fps = probe(tmp)
        except ValueError as e:
            raise ClipRefused(400, f"not a usable video: {e}") from None
        duration = n / fps if fps > 0 else 0.0
        if fps <= 0 or n <= 0:
            raise ClipRefused(400, "not a usable video: no frame count or frame rate in the container")
        if duration > max_s:
            raise ClipRefused(413, f"video of {duration:.1f} s is over the limit of {max_s:g} s")
        try:
            x, crops = loaded.inputs(Path(tmp))
            first = read_frames(tmp, loaded.prep.video.frames)
        except ValueError as e:
            raise ClipRefused(422 if "no face" in str(e) else 400, f"not a usable video: {e}") from None
        shown = first.images[first.indices.index(crops[0].frame)] if crops and crops[0].frame in first.indices \
            else None
        return Clip(x, crops, duration, n, shown)
    finally:
        Path(tmp).unlink(missing_ok=True)


def clip_answer(loaded: LoadedModel, clip: Clip, p: np.ndarray) -> dict[str, Any]:
    """The JSON of a scored clip: its verdict (the frames aggregated as the model was selected) and each frame."""
    score = loaded.video_score(p)
    c = loaded.record.config
    face = {} if clip.first is None else {"face_png": base64.b64encode(
        boxed_png(clip.first, clip.crops[0].box)).decode("ascii"), "face_frame": clip.crops[0].frame}
    return {**face, "p_fake": score, "label": loaded.label(score), "threshold": loaded.threshold,
            "aggregation": str(c.get("video_agg", "mean")), "duration_s": clip.duration_s, "n_frames": clip.n_frames,
            "frames": [{"frame": k.frame, "time_s": k.time_s, "p_fake": float(q), "box": list(k.box) if k.box else None}
                       for k, q in zip(clip.crops, p, strict=True)]}
