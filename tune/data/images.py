"""Dataset discovery, decoding and augmentation.

Layout: ROOT/{train,valid,test}/{Fake,Real}/* (also validation/ or val/, any letter case).
Label convention: Fake = 1 (the positive class), Real = 0.

Images are decoded and resized once, into a uint8 array (N, 3, S, S). When a cache folder is
given the array lives in a .npy keyed by the split's content fingerprint and the size, written a block
at a time and mapped read-only by every reader (tune/data/mapped.py), so every trial and finalize job on
a machine shares one decoded copy, and a pickled ImageSet carries the file's path, never its pixels.
Train-time augmentation is tune/data/augment.py's.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tune import FAKE, REAL
from tune.core import atomic_write_bytes, cache_root
from tune.data.decode import MAX_PIXELS, LiveImages, crop_side, decode_image, decode_rgb, resize_rgb  # noqa: F401
from tune.data.frames import Preprocess, prepare, settings_digest
from tune.data.mapped import DataError, MappedImages, file_lock, write_rows
from tune.data.video import VIDEO_EXTS, check_leaks, is_video

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
SPLIT_NAMES = {"train": ("train",), "valid": ("valid", "validation", "val"), "test": ("test",)}
CLASS_LABELS = {"fake": FAKE, "real": REAL}


@dataclass
class SplitFiles:
    split: str
    paths: list[Path]
    labels: list[int]
    ignored: int = 0  # non-image files found and skipped
    split_dir: Path | None = None  # the folder the paths are under (fingerprints are relative to it)
    videos: list[str] | None = None  # each row's video key (tune/data/frames.py), "" for a still image


@dataclass
class ImageSet:
    """Decoded images of one split: x is uint8 (N, 3, S, S): in memory, mapped from the decoded cache
    (MappedImages), or decoded at every use (LiveImages, --no-cache)."""

    split: str
    x: np.ndarray | MappedImages | LiveImages
    y: np.ndarray  # float32 labels, 1 = Fake
    paths: list[str]
    fingerprint: str
    skipped: list[str] = field(default_factory=list)
    resize: str = "bilinear"  # or "crop": native-resolution pixels (train: a larger centre square, cut per view)
    videos: list[str] | None = None  # each row's video key ("" for a still image); None: no video in the split

    def __len__(self) -> int:
        return len(self.y)

    def __reduce__(self) -> tuple[Any, ...]:
        # x pickles as itself: a MappedImages as its path (then _restore decodes it on a node without the file),
        # LiveImages as its paths; only an in-memory array (no decoded cache) carries its pixels
        return (_restore, (self.split, self.x, self.y, self.paths, self.fingerprint, self.skipped, self.resize,
                           self.videos))


def _restore(split: str, x: Any, y: np.ndarray, paths: list[str], fingerprint: str, skipped: list[str],
             resize: str = "bilinear", videos: list[str] | None = None) -> ImageSet:
    if isinstance(x, MappedImages) and not x.exists():
        _rebuild(x, paths, resize)
    return ImageSet(split, x, y, paths, fingerprint, skipped, resize, videos)


def _child_ci(parent: Path, names: tuple[str, ...]) -> Path | None:
    """The child of `parent` whose name matches one of `names`, ignoring case."""
    try:
        children = {c.name.lower(): c for c in parent.iterdir()}
    except (NotADirectoryError, FileNotFoundError):
        return None
    except PermissionError:
        raise DataError(f"cannot list folder {parent}: permission denied") from None
    for name in names:
        if name in children:
            return children[name]
    return None


def find_split_dir(root: Path, split: str) -> Path:
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder not found: {root} (expected ROOT/{{train,valid,test}}/{{Fake,Real}}/)")
    if not root.is_dir():
        raise DataError(f"data path is a file, not a folder: {root}")
    d = _child_ci(root, SPLIT_NAMES[split])
    if d is None:
        raise DataError(f"missing split folder: {root}/{split} (also accepted: {', '.join(SPLIT_NAMES[split])})")
    if not d.is_dir():
        raise DataError(f"split path is a file, not a folder: {d}")
    return d


def _walk_files(top: Path) -> list[Path]:
    """All files under `top`, following symlinked folders but never entering one twice (no loop hangs)."""
    # Pre-seed the ancestors too, so a link back up (e.g. Fake/up -> ..) is not walked into the split folder.
    seen = {(st.st_dev, st.st_ino) for st in map(os.stat, Path(os.path.realpath(top)).parents)}
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames.sort()
        out += [Path(dirpath) / f for f in sorted(filenames)]
    return out


def scan_split(root: Path, split: str) -> SplitFiles:
    split_dir = find_split_dir(root, split)
    paths: list[Path] = []
    labels: list[int] = []
    ignored = 0
    for cls in ("Fake", "Real"):
        d = _child_ci(split_dir, (cls.lower(),))
        if d is None:
            raise DataError(f"missing class folder: {split_dir}/{cls}")
        if not d.is_dir():
            raise DataError(f"class path is a file, not a folder: {d}")
        files = _walk_files(d)
        images = [f for f in files if f.suffix.lower() in IMAGE_EXTS or is_video(f)]
        ignored += len(files) - len(images)
        if not images:
            raise DataError(f"empty class folder: {d} has no images or videos (expected "
                            f"{', '.join(sorted(IMAGE_EXTS))} or {', '.join(VIDEO_EXTS)})")
        paths += images
        labels += [CLASS_LABELS[cls.lower()]] * len(images)
    return SplitFiles(split, paths, labels, ignored, split_dir)


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as e:  # unreadable: decoding reports it with the other bad images
        return f"unreadable:{e.errno}"
    return h.hexdigest()


def fingerprint(files: SplitFiles) -> str:
    """Content hash of a split: relative paths, labels and file bytes (renames and edits both count)."""
    h = hashlib.sha256()
    base = files.split_dir or (files.paths[0].parents[1] if files.paths else Path("."))
    with ThreadPoolExecutor(max_workers=4) as pool:
        digests = list(pool.map(file_digest, files.paths))
    for p, lab, dig in zip(files.paths, files.labels, digests, strict=False):
        h.update(f"{p.relative_to(base).as_posix()}\t{lab}\t{dig}\n".encode())
    return h.hexdigest()[:20]


DECODE_BLOCK = 256  # images decoded at a time: memory stays at about one block (39 MB at 224 px)


def _decoded_blocks(files: SplitFiles, size: int, bad: list[tuple[Path, str]],
                    resize: str = "bilinear") -> Iterator[np.ndarray]:
    """The readable images of `files` in order, uint8 (B, 3, size, size), a block at a time; each
    unreadable one is appended to `bad` with the reason."""
    n = len(files.paths)
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        for start in range(0, n, DECODE_BLOCK):
            block = np.empty((min(DECODE_BLOCK, n - start), 3, size, size), dtype=np.uint8)

            def one(j: int, block: np.ndarray = block, start: int = start) -> bool:
                try:
                    block[j] = decode_image(files.paths[start + j], size, resize)
                    return True
                except (ValueError, OSError) as e:
                    bad.append((files.paths[start + j], str(e)))
                    return False

            ok = np.fromiter(pool.map(one, range(len(block))), dtype=bool, count=len(block))
            yield block if ok.all() else block[ok]


def _kept(files: SplitFiles, bad: list[tuple[Path, str]], label: str, skip_bad: bool) -> np.ndarray:
    """Indices of the images kept after decoding; refuses bad images (unless skipped) and a missing class."""
    bad = sorted(bad)
    if bad and not skip_bad:
        listing = "; ".join(f"{p} ({why})" for p, why in bad[:50])
        more = f"; and {len(bad) - 50} more" if len(bad) > 50 else ""
        raise DataError(f"{len(bad)} bad image(s) in {label}: {listing}{more} "
                        "(expected readable jpg/jpeg/png/bmp/webp; --skip-bad-images skips them)")
    bad_set = {p for p, _ in bad}
    keep = np.asarray([i for i, p in enumerate(files.paths) if p not in bad_set], dtype=np.int64)
    if len(keep) == 0:
        raise DataError(f"no readable images in {label}")
    y = np.asarray([files.labels[i] for i in keep])
    for cls, lab in (("Fake", FAKE), ("Real", REAL)):
        if not (y == lab).any():
            raise DataError(f"{label} has no readable {cls} images")
    return keep


def _rebuild(x: MappedImages, paths: list[str], resize: str = "bilinear") -> None:
    """Decode a split's kept images again into the file its handle names: a node of a cluster that has no
    copy of the driver's decoded cache makes its own, once (other processes there wait for it)."""
    try:
        with file_lock(Path(x.path).with_suffix(".lock")):
            if not x.exists():
                _redecode(x, paths, resize)
    except OSError as e:  # a node where the driver's cache folder cannot be made: one clear line
        raise DataError(f"cannot write the decoded images at {x.path} on this machine ({e.strerror or e}); every "
                        "node needs the cache folder writable at the same path") from None


def _redecode(x: MappedImages, paths: list[str], resize: str) -> None:
    files = SplitFiles("rebuild", [Path(p) for p in paths], [REAL] * len(paths))
    bad: list[tuple[Path, str]] = []

    def blocks() -> Iterator[np.ndarray]:
        yield from _decoded_blocks(files, x.shape[-1], bad, resize)
        if bad:
            raise DataError(f"cannot decode the images again at {x.path} on this machine: {len(bad)} of "
                            f"{len(paths)} unreadable here (e.g. {bad[0][0]}: {bad[0][1]}); every node needs "
                            "the dataset at the same path")

    write_rows(Path(x.path), len(paths), x.shape[1:], blocks())


def load_split(root: Path, split: str, size: int, *, skip_bad: bool = False,
               cache_dir: Path | None = None, live: bool = False, resize: str = "bilinear",
               prep: Preprocess | None = None) -> ImageSet:
    """Scan, fingerprint and decode a split; reuse the decoded array from `cache_dir` when present.

    With `live`, images are still checked once here, but decoded again at every use (LiveImages). Videos (and,
    with `prep.faces`, still images) become their face crops first (tune/data/frames.py), tagged with their video.
    """
    files = scan_split(root, split)
    label = f"split '{split}' of {root}"
    prep = prep or Preprocess()
    if not any(prep.touches(p) for p in files.paths):
        return load_files(files, size, label=label, skip_bad=skip_bad, cache_dir=cache_dir, live=live,
                          resize=resize, train=split == "train")
    fp = settings_digest(fingerprint(files), prep)
    frames_root = (Path(cache_dir).parent if cache_dir else cache_root()) / "frames"
    paths, labels, videos, bad = prepare(files.paths, files.labels, files.split_dir, prep, frames_root)
    if bad and not skip_bad:
        listing = "; ".join(f"{p} ({why})" for p, why in sorted(bad)[:50])
        more = f"; and {len(bad) - 50} more" if len(bad) > 50 else ""
        raise DataError(f"{len(bad)} bad video(s) or image(s) in {label}: {listing}{more} (expected a readable "
                        f"{'/'.join(e[1:] for e in VIDEO_EXTS)} video or image"
                        f"{' with a face' if prep.faces else ''}; --skip-bad-images skips them)")
    prepared = SplitFiles(split, paths, labels, files.ignored, files.split_dir, videos)
    out = load_files(prepared, size, label=label, skip_bad=skip_bad, cache_dir=cache_dir, live=live, resize=resize,
                     train=split == "train", fp=fp)
    out.skipped = sorted({*out.skipped, *(str(p) for p, _ in bad)})
    return out


def load_files(files: SplitFiles, size: int, *, label: str, skip_bad: bool = False, cache_dir: Path | None = None,
               live: bool = False, resize: str = "bilinear", train: bool = False, fp: str | None = None) -> ImageSet:
    """Fingerprint and decode listed images (a split, or a held-out source: tune/data/heldout.py) into an ImageSet
    named `files.split`; `label` says what they are in error messages. Both classes must be readable.
    resize crop: stored at decode.crop_side's side (`train`: the larger square the views are cut from)."""
    bad: list[tuple[Path, str]] = []
    if resize == "crop":
        size = crop_side(files.paths, size, train=train, label=label)
    fp = fp or fingerprint(files)

    def videos(keep: np.ndarray) -> list[str] | None:  # the kept rows' video keys; None: no video in the split
        return [files.videos[i] for i in keep] if files.videos and any(files.videos) else None

    if live:  # every image checked once, a block at a time; none kept
        for _ in _decoded_blocks(files, size, bad, resize):
            pass
        keep = _kept(files, bad, label, skip_bad)
        paths = [str(files.paths[i]) for i in keep]
        return ImageSet(files.split, LiveImages(paths, size, resize), np.asarray([files.labels[i] for i in keep],
                        dtype=np.float32), paths, fp, [str(p) for p, _ in sorted(bad)], resize, videos(keep))
    split = files.split
    if cache_dir is None:  # in memory (tests, a cache turned off): filled a block at a time
        x = np.empty((len(files.paths), 3, size, size), dtype=np.uint8)
        rows = 0
        for b in _decoded_blocks(files, size, bad, resize):
            x[rows:rows + len(b)] = b
            rows += len(b)
        keep = _kept(files, bad, label, skip_bad)
        return ImageSet(split, x[:rows], np.asarray([files.labels[i] for i in keep], dtype=np.float32),
                        [str(files.paths[i]) for i in keep], fp, [str(p) for p, _ in sorted(bad)], resize,
                        videos(keep))
    # v2: 16-bit images are scaled by a fixed 65535 instead of each image's maximum.
    # the kept indices; written last, it marks completion
    marker = Path(cache_dir) / f"decoded-v2-{fp}-{'crop' if resize == 'crop' else ''}{size}.npz"
    if not marker.exists():
        with file_lock(marker.with_suffix(".lock")):  # one process per machine decodes; the others then map it
            if not marker.exists():
                def blocks() -> Iterator[np.ndarray]:
                    yield from _decoded_blocks(files, size, bad, resize)
                    _kept(files, bad, label, skip_bad)  # refused here: the file is never committed

                write_rows(marker.with_suffix(".npy"), len(files.paths), (3, size, size), blocks())
                buf = io.BytesIO()
                kept = _kept(files, bad, label, skip_bad)  # and each kept row's video key, beside the rows
                np.savez(buf, keep=kept, videos=np.asarray(videos(kept) or [], dtype=str))
                atomic_write_bytes(marker, buf.getvalue())
    with np.load(marker, allow_pickle=False) as z:
        keep = z["keep"]
    x = MappedImages.open(marker.with_suffix(".npy"))
    keep_set = set(keep.tolist())
    skipped = [str(p) for i, p in enumerate(files.paths) if i not in keep_set]
    if skipped and not skip_bad:
        raise DataError(f"{len(skipped)} unreadable image(s) in {files.split_dir}: "
                        f"{', '.join(skipped[:20])} (use --skip-bad-images to skip them)")
    y = np.asarray([files.labels[i] for i in keep], dtype=np.float32)
    return ImageSet(split, x, y, [str(files.paths[i]) for i in keep], fp, skipped, resize, videos(keep))


def check_video_leaks(root: Path, splits: tuple[str, ...] = ("train", "valid", "test")) -> None:
    """Refuse (one line) a video in two of `splits`, by id or by bytes. The search checks train and valid (it never
    reads the test split); finalize, the one reader of the test split, checks all three before testing."""
    listings = {s: [p for p in scan_split(root, s).paths if is_video(p)] for s in splits}
    if sum(map(bool, listings.values())) < 2:
        return
    with ThreadPoolExecutor(max_workers=4) as pool:
        every = [p for ps in listings.values() for p in ps]
        check_leaks(listings, dict(zip(every, pool.map(file_digest, every), strict=True)))


def to_float(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    return as_tensor(x).float().div_(255.0) if isinstance(x, np.ndarray) else x.float().div_(255.0)


def as_tensor(a: np.ndarray) -> torch.Tensor:
    """A tensor owning a writable copy (slices of read-only memmaps cannot be wrapped directly)."""
    return torch.from_numpy(np.array(a))


def split_counts(root: Path, splits: tuple[str, ...] = ("train", "valid", "test")) -> dict[str, dict[str, int]]:
    """Images per split and class (for the dataset-distribution plot)."""
    out: dict[str, dict[str, int]] = {}
    for s in splits:
        f = scan_split(root, s)
        out[s] = {"Fake": f.labels.count(FAKE), "Real": f.labels.count(REAL)}
    return out
