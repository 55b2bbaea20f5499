"""Videos and faces into a split's listing: each video becomes its K sampled frames' face crops, each still image
its face crop (with a `faces:` setting), written once as lossless PNGs and listed in their place, so the decoded
cache, fingerprints, LiveImages and every reader take them like any image. Each row keeps its video's key.

One video at a time is decoded and cropped, so memory stays flat in the number of videos; the crops of a file are
kept under the frames cache by the file's content hash and the settings (`Preprocess.key`), so a second search,
finalize or a rerun crops nothing again. Inference (predict, serve, evaluate) calls `crops_of` with the model
record's settings: the same function, the same pixels (PNG is lossless).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tune.core import UserError, atomic_write_bytes, atomic_write_text, file_sha256
from tune.data.decode import decode_image, decode_rgb, to_model_size
from tune.data.faces import FaceSettings, crop_face
from tune.data.mapped import file_lock
from tune.data.video import VideoSettings, is_video, read_frames

CROPS = "crops.json"  # a file's crops are complete when this is written (last)


@dataclass(frozen=True)
class Preprocess:
    """The space's `video:` and `faces:` blocks: how a file becomes model inputs before the usual resize."""

    video: VideoSettings = field(default_factory=VideoSettings)
    faces: FaceSettings | None = None

    @classmethod
    def parse(cls, video: Any = None, faces: Any = None) -> Preprocess:
        if video is not None and (not isinstance(video, dict) or set(video) - {"frames"}):
            raise UserError(f"video: expected a mapping like {{frames: 16}}, got {video!r}")
        return cls(VideoSettings(**(video or {})), FaceSettings.parse(faces))

    @classmethod
    def record(cls, d: dict[str, Any] | None) -> Preprocess:
        """The settings as run.json or a model record holds them (to_dict); None: a record from before videos."""
        return cls.parse((d or {}).get("video"), (d or {}).get("faces"))

    def to_dict(self) -> dict[str, Any]:
        return {"video": {"frames": self.video.frames}, "faces": self.faces.to_dict() if self.faces else None}

    @property
    def key(self) -> str:
        """Names the crops these settings make (a folder per file under the frames cache)."""
        f = self.faces
        return f"k{self.video.frames}-" + (f"{f.detector}-m{f.margin:g}-s{f.size}" if f else "whole")

    def touches(self, path: Path) -> bool:
        """Whether `path` is prepared here (a video always; a still image only with face cropping)."""
        return is_video(path) or self.faces is not None


@dataclass
class Crop:
    """One model input cut from a file: its pixels, the frame it came from and where the face was."""

    rgb: np.ndarray  # uint8 (H, W, 3)
    frame: int  # frame index in the video (0 for a still image)
    time_s: float
    box: tuple[int, int, int, int] | None  # the face box in the frame (None: the whole frame, no face cropping)


def crops_of(path: Path | str, prep: Preprocess) -> list[Crop]:
    """A video's sampled frames (or a still image) as the model's inputs: each frame's face crop (frames without a
    face are left out) or, without face cropping, the whole frame. ValueError with a short reason when the file
    cannot be decoded or no frame holds a face."""
    path = Path(path)
    if is_video(path):
        fr = read_frames(path, prep.video.frames)
        frames = list(zip(fr.images, fr.indices, fr.times_s, strict=True))
        what = f"any of its {len(frames)} sampled frames"
    else:
        frames = [(np.asarray(decode_rgb(path), dtype=np.uint8), 0, 0.0)]
        what = "the image"
    if prep.faces is None:
        return [Crop(rgb, i, t, None) for rgb, i, t in frames]
    out = []
    for rgb, i, t in frames:
        c = crop_face(rgb, prep.faces)
        if c is not None:
            out.append(Crop(c.crop, i, t, c.box))
    if not out:
        raise ValueError(f"no face found in {what} (detector {prep.faces.detector})")
    return out


def model_inputs(path: Path | str, prep: Preprocess, size: int,
                 resize: str = "bilinear") -> tuple[np.ndarray, list[Crop]]:
    """What a model scores for one file, made as training made it: uint8 (N, 3, size, size), one row per crop (a
    video's frames with a face; a still image: one), and the crops. Training decodes the crops' PNGs through
    decode_image; here the same pixels go through the same resize (to_model_size), so the rows are bit-identical."""
    if not prep.touches(Path(path)):
        return decode_image(Path(path), size, resize)[None], []
    crops = crops_of(path, prep)
    return np.stack([to_model_size(Image.fromarray(c.rgb), size, resize) for c in crops]), crops


def cached_crops(path: Path, prep: Preprocess, root: Path) -> list[Path]:
    """The PNG files of `crops_of(path, prep)`, made once per file content and settings under `root`."""
    folder = Path(root) / f"{file_sha256(path)[:24]}-{prep.key}"
    done = folder / CROPS
    if not done.is_file():
        with file_lock(folder.parent / f"{folder.name}.lock"):  # one process per machine crops; the others wait
            if not done.is_file():
                crops = crops_of(path, prep)
                names = []
                for k, c in enumerate(crops):
                    name = f"{k:04d}-f{c.frame:06d}.png"
                    buf = _png(c.rgb)
                    atomic_write_bytes(folder / name, buf)
                    names.append({"file": name, "frame": c.frame, "time_s": c.time_s, "box": c.box})
                atomic_write_text(done, json.dumps({"source": str(path), "settings": prep.to_dict(),
                                                    "crops": names}, indent=1))
    listing = json.loads(done.read_text())["crops"]
    return [folder / c["file"] for c in listing]


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)  # lossless: decoded back, the same pixels
    return buf.getvalue()


def prepare(paths: list[Path], labels: list[int], split_dir: Path | None, prep: Preprocess,
            root: Path) -> tuple[list[Path], list[int], list[str], list[tuple[Path, str]]]:
    """A split's listing with its videos (and, with face cropping, its images) replaced by their crops, file by
    file: (paths, labels, video key of each row ("" for a still image), bad files with the reason)."""
    out_paths: list[Path] = []
    out_labels: list[int] = []
    videos: list[str] = []
    bad: list[tuple[Path, str]] = []
    for p, lab in zip(paths, labels, strict=True):
        if not prep.touches(p):
            out_paths.append(p)
            out_labels.append(lab)
            videos.append("")
            continue
        try:
            crops = cached_crops(p, prep, root)
        except (ValueError, OSError) as e:
            bad.append((p, str(e)))
            continue
        key = video_key(p, split_dir) if is_video(p) else ""
        out_paths += crops
        out_labels += [lab] * len(crops)
        videos += [key] * len(crops)
    return out_paths, out_labels, videos, bad


def video_key(path: Path, split_dir: Path | None) -> str:
    """A video's key within its split: its path under the split folder (Fake/000_003.mp4), unique there."""
    try:
        return Path(path).relative_to(split_dir).as_posix() if split_dir else Path(path).name
    except ValueError:
        return Path(path).name


def settings_digest(fp: str, prep: Preprocess) -> str:
    """A split's fingerprint once prepared: its files' content hash and the settings that cut them."""
    return hashlib.sha256(f"{fp}\t{json.dumps(prep.to_dict(), sort_keys=True)}".encode()).hexdigest()[:20]
