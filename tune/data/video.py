"""Videos as data: which files are videos, a video's id, and K frames spaced evenly over it (OpenCV decodes).

A video of a split is cut into `frames` RGB frames; tune/data/frames.py turns them into face crops that enter the
decoded cache like images, each tagged with its video. The same video in two splits (the same bytes, or the same
id: the file name without its extension) is a leak: `check_leaks` refuses it in one line.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tune.core import UserError

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
DEFAULT_FRAMES = 16
MAX_FRAMES = 256  # frames sampled per video: more says the same thing about a clip, at K x the cost
MAX_VIDEO_FRAMES = 10_000_000  # a container claiming more is refused rather than read


@dataclass(frozen=True)
class VideoSettings:
    """The space's `video:` block: frames sampled per video, spaced evenly."""

    frames: int = DEFAULT_FRAMES

    def __post_init__(self) -> None:
        if not isinstance(self.frames, int) or not 1 <= self.frames <= MAX_FRAMES:
            raise UserError(f"video: frames must be an integer in 1..{MAX_FRAMES}, got {self.frames!r}")


@dataclass
class Frames:
    """The sampled frames of one video: RGB uint8 (H, W, 3) each, with their index and time in the video."""

    path: Path
    images: list[np.ndarray]
    indices: list[int]
    fps: float
    n_frames: int

    @property
    def times_s(self) -> list[float]:
        return [i / self.fps if self.fps > 0 else float(i) for i in self.indices]

    @property
    def duration_s(self) -> float:
        return self.n_frames / self.fps if self.fps > 0 else 0.0


def is_video(path: Path | str) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTS


def video_id(path: Path | str) -> str:
    """What names a video across splits: its file name without the extension (FaceForensics++'s 000_003)."""
    return Path(path).stem


def frame_indices(n: int, k: int) -> list[int]:
    """k frame indices spaced evenly over n frames (the centre of each of k equal stretches); all n when n <= k."""
    if n <= k:
        return list(range(n))
    return [int((i + 0.5) * n / k) for i in range(k)]


def probe(path: Path | str) -> tuple[int, float]:
    """(frames, frames per second) of a video; ValueError when OpenCV cannot open it."""
    import cv2  # heavy optional dependency (opencv-python-headless): only videos need it

    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise ValueError("cannot be opened as a video")
        n, fps = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    finally:
        cap.release()
    if n > MAX_VIDEO_FRAMES:
        raise ValueError(f"claims {n} frames, more than {MAX_VIDEO_FRAMES}")
    return n, fps


def read_frames(path: Path | str, k: int) -> Frames:
    """k frames spaced evenly over the video, read in one sequential pass (seeking is not frame-exact in every
    container). ValueError with a short reason when the file is no readable video or holds no frame."""

    path = Path(path)
    if path.stat().st_size == 0:
        raise ValueError("zero bytes")
    n, fps = probe(path)
    frames, decoded = _read(path, k, n if n > 0 else _count(path), fps)
    if len(frames.indices) < len(frame_indices(frames.n_frames, k)) and decoded < frames.n_frames:
        frames, _ = _read(path, k, decoded, fps)  # the container over-stated its frame count: re-space over it
    if not frames.images:
        raise ValueError("no decodable frame")
    return frames


def _read(path: Path, k: int, n: int, fps: float) -> tuple[Frames, int]:
    """The frames of frame_indices(n, k) that decode, and how many frames were read before stopping."""
    import cv2  # heavy optional dependency (opencv-python-headless): only videos need it

    want = frame_indices(n, k)
    wanted, got = set(want), {}
    cap = cv2.VideoCapture(str(path))
    i = 0
    try:
        while want and i <= want[-1] and cap.grab():
            if i in wanted:
                ok, bgr = cap.retrieve()
                if ok and bgr is not None and bgr.ndim == 3:
                    got[i] = np.ascontiguousarray(bgr[..., ::-1])
            i += 1
    finally:
        cap.release()
    idx = sorted(got)
    return Frames(path, [got[j] for j in idx], idx, fps, n), i


def _count(path: Path) -> int:
    import cv2  # heavy optional dependency (opencv-python-headless): only videos need it

    cap = cv2.VideoCapture(str(path))
    n = 0
    try:
        while cap.grab() and n < MAX_VIDEO_FRAMES:
            n += 1
    finally:
        cap.release()
    return n


def check_leaks(listings: dict[str, list[Path]], digests: dict[Path, str]) -> None:
    """Refuse, in one line, a video found in two splits: by id (file name without extension) or by its bytes.
    `listings`: split -> its video files; `digests`: file -> content hash."""
    by_id: dict[str, dict[str, Path]] = defaultdict(dict)
    by_bytes: dict[str, dict[str, Path]] = defaultdict(dict)
    for split, paths in listings.items():
        for p in paths:
            by_id[video_id(p)].setdefault(split, p)
            by_bytes[digests[p]].setdefault(split, p)
    for what, index in (("the same id", by_id), ("the same bytes", by_bytes)):
        for _, where in sorted(index.items()):
            if len(where) > 1:
                (s1, p1), (s2, p2) = sorted(where.items())[:2]
                raise UserError(f"video leak: {p1} ({s1}) and {p2} ({s2}) are {what}; a video's frames must stay "
                                "in one split (move or rename one of them)")
