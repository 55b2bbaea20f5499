"""Dataset discovery, decoding and augmentation.

Layout: ROOT/{train,valid,test}/{Fake,Real}/* (also validation/ or val/, any letter case).
Label convention: Fake = 1 (the positive class), Real = 0.

Images are decoded and resized once, into a uint8 array (N, 3, S, S). When a cache folder is
given the array lives in a memory-mapped .npy keyed by the split's content fingerprint and the
size, so every trial on a machine shares one decoded copy. Train-time augmentation is
tune/data/augment.py's.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFile

from tune import FAKE, REAL
from tune.core import UserError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
SPLIT_NAMES = {"train": ("train",), "valid": ("valid", "validation", "val"), "test": ("test",)}
CLASS_LABELS = {"fake": FAKE, "real": REAL}
MAX_PIXELS = 64_000_000  # refuse decompression bombs (PIL's own default warns at 89 M)


class DataError(UserError):
    pass


@dataclass
class SplitFiles:
    split: str
    paths: list[Path]
    labels: list[int]
    ignored: int = 0  # non-image files found and skipped
    split_dir: Path | None = None  # the folder the paths are under (fingerprints are relative to it)


@dataclass
class ImageSet:
    """Decoded images of one split: x is uint8 (N, 3, S, S), possibly a read-only memmap."""

    split: str
    x: np.ndarray
    y: np.ndarray  # float32 labels, 1 = Fake
    paths: list[str]
    fingerprint: str
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.y)


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
        images = [f for f in files if f.suffix.lower() in IMAGE_EXTS]
        ignored += len(files) - len(images)
        if not images:
            raise DataError(f"empty class folder: {d} has no images (expected {', '.join(sorted(IMAGE_EXTS))})")
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


def decode_image(src: Path | bytes, size: int) -> np.ndarray:
    """One image (a file, or its bytes) → uint8 (3, size, size) RGB. Raises ValueError with a short
    reason when it can't (OSError when a file cannot be opened)."""
    return resize_rgb(decode_rgb(src), size)


def resize_rgb(im: Image.Image, size: int) -> np.ndarray:
    """An RGB image → uint8 (3, size, size): the one resize every model input goes through."""
    rgb = im.resize((size, size), Image.BILINEAR)
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1))


def decode_rgb(src: Path | bytes) -> Image.Image:
    """One image (a file, or its bytes) → an RGB PIL image at its native size (errors as decode_image)."""
    if (len(src) if isinstance(src, bytes) else Path(src).stat().st_size) == 0:
        raise ValueError("zero bytes")
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise ValueError(f"decompression bomb refused ({im.width}x{im.height} pixels)")
                im.load()
                if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                    # 16-bit greyscale: scale the full 16-bit range to 8 bits rather than clip. A fixed
                    # scale, not the image's own maximum: a dark image must not come out white.
                    arr = np.asarray(im, dtype=np.float64)
                    top = 65535.0 if arr.max() <= 65535 else arr.max()
                    im = Image.fromarray(np.clip(arr * (255.0 / top) + 0.5, 0, 255).astype(np.uint8))
                elif im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                    im = im.convert("RGBA")
                rgb = im.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ValueError(f"decompression bomb refused ({e})") from None
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises many types for corrupt/truncated files
        raise ValueError(f"unreadable: {str(e).strip() or type(e).__name__}"[:160]) from None
    return rgb


def _decode_all(files: SplitFiles, size: int) -> tuple[np.ndarray, list[tuple[Path, str]]]:
    x = np.zeros((len(files.paths), 3, size, size), dtype=np.uint8)
    bad: list[tuple[Path, str]] = []

    def one(i: int) -> None:
        try:
            x[i] = decode_image(files.paths[i], size)
        except (ValueError, OSError) as e:
            bad.append((files.paths[i], str(e)))

    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        list(pool.map(one, range(len(files.paths))))
    return x, sorted(bad)


class LiveImages:
    """Decodes from disk on every access, as the usual pipeline does every epoch (`--no-cache`).

    Indexable like the decoded uint8 array it stands in for, so training code does not care.
    """

    def __init__(self, paths: list[str], size: int) -> None:
        self.paths, self.size = paths, size
        self.shape = (len(paths), 3, size, size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, idx: Any) -> np.ndarray:
        rows = np.arange(len(self.paths))[idx]
        return np.stack([decode_image(Path(self.paths[i]), self.size) for i in np.atleast_1d(rows)])


def load_split(root: Path, split: str, size: int, *, skip_bad: bool = False,
               cache_dir: Path | None = None, live: bool = False) -> ImageSet:
    """Scan, fingerprint and decode a split; reuse the decoded array from `cache_dir` when present.

    With `live`, images are still checked once here, but decoded again at every use (LiveImages).
    """
    return load_files(scan_split(root, split), size, label=f"split '{split}' of {root}", skip_bad=skip_bad,
                      cache_dir=cache_dir, live=live)


def load_files(files: SplitFiles, size: int, *, label: str, skip_bad: bool = False, cache_dir: Path | None = None,
               live: bool = False) -> ImageSet:
    """Fingerprint and decode listed images (a split, or a held-out source: tune/data/heldout.py) into an ImageSet
    named `files.split`; `label` says what they are in error messages. Both classes must be readable."""
    if live:
        s = load_files(files, size, label=label, skip_bad=skip_bad, cache_dir=None)
        return ImageSet(s.split, LiveImages(s.paths, size), s.y, s.paths, s.fingerprint, s.skipped)  # type: ignore[arg-type]
    split = files.split
    fp = fingerprint(files)
    # v2: 16-bit images are scaled by a fixed 65535 instead of each image's maximum.
    cached = Path(cache_dir) / f"decoded-v2-{fp}-{size}.npz" if cache_dir else None
    if cached is not None and cached.exists():
        with np.load(cached, allow_pickle=False) as z:
            keep = z["keep"]
        x = np.load(cached.with_suffix(".npy"), mmap_mode="r")
        kept = [files.paths[i] for i in keep]
        keep_set = set(keep.tolist())
        skipped = [str(p) for i, p in enumerate(files.paths) if i not in keep_set]
        if skipped and not skip_bad:
            raise DataError(f"{len(skipped)} unreadable image(s) in {files.split_dir}: "
                            f"{', '.join(skipped[:20])} (use --skip-bad-images to skip them)")
        y = np.asarray([files.labels[i] for i in keep], dtype=np.float32)
        return ImageSet(split, x, y, [str(p) for p in kept], fp, skipped)

    x, bad = _decode_all(files, size)
    if bad and not skip_bad:
        listing = "; ".join(f"{p} ({why})" for p, why in bad[:50])
        more = f"; and {len(bad) - 50} more" if len(bad) > 50 else ""
        raise DataError(f"{len(bad)} bad image(s) in {label}: {listing}{more} "
                        "(expected readable jpg/jpeg/png/bmp/webp; --skip-bad-images skips them)")
    bad_set = {p for p, _ in bad}
    keep = np.asarray([i for i, p in enumerate(files.paths) if p not in bad_set], dtype=np.int64)
    if len(keep) == 0:
        raise DataError(f"no readable images in {label}")
    x = x[keep] if len(bad) else x
    y = np.asarray([files.labels[i] for i in keep], dtype=np.float32)
    for cls, lab in (("Fake", FAKE), ("Real", REAL)):
        if not (y == lab).any():
            raise DataError(f"{label} has no readable {cls} images")
    if cached is not None:
        from tune.core import atomic_write_bytes

        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, x)
        os.replace(tmp, cached.with_suffix(".npy"))
        buf = io.BytesIO()
        np.savez(buf, keep=keep)
        atomic_write_bytes(cached, buf.getvalue())  # written last: its presence marks the cache complete
    return ImageSet(split, x, y, [str(files.paths[i]) for i in keep], fp, [str(p) for p, _ in bad])


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
