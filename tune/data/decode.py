"""One image, a file or its bytes, to the uint8 (3, S, S) RGB array every model input is made of; and
LiveImages, which does that at every access (`--no-cache`)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile

from tune.core import UserError

MAX_PIXELS = 64_000_000  # refuse decompression bombs (PIL's own default warns at 89 M)


def decode_image(src: Path | bytes, size: int, resize: str = "bilinear") -> np.ndarray:
    """One image (a file, or its bytes) → uint8 (3, size, size) RGB, resized whole (bilinear) or its centre
    cut at native resolution (crop). Raises ValueError with a short reason when it can't (OSError when a
    file cannot be opened)."""
    return to_model_size(decode_rgb(src), size, resize)


def to_model_size(im: Image.Image, size: int, resize: str = "bilinear") -> np.ndarray:
    return crop_rgb(im, size) if resize == "crop" else resize_rgb(im, size)


def crop_rgb(im: Image.Image, size: int) -> np.ndarray:
    """An RGB image → its centre size x size pixels, never resampled (a side left over is split with the
    extra pixel on the right/bottom). ValueError when the image is smaller."""
    w, h = im.size
    if w < size or h < size:
        raise ValueError(f"{w}x{h} pixels, smaller than the {size} px crop (resize: crop)")
    left, top = (w - size) // 2, (h - size) // 2
    arr = np.asarray(im, dtype=np.uint8)[top:top + size, left:left + size]
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def image_side(path: Path) -> int:
    """The shorter side of an image file, from its header (0 when it cannot be read: decoding says why)."""
    try:
        with Image.open(path) as im:
            return min(im.size)
    except Exception:  # noqa: BLE001 - reported by the decode that follows, with the other bad images
        return 0


def crop_side(paths: list[Path], size: int, *, train: bool, label: str) -> int:
    """The side a split is stored at under resize: crop. Valid, test and held-out sets: `size`, their centre
    crop. Train: the centre square of up to 2 x size of every image (capped by the smallest image), from which
    each view cuts a random size x size window (tune/data/augment.py). A crop larger than the smallest image
    is one clear line naming it."""
    sides = [(image_side(p), p) for p in paths]
    readable = [t for t in sides if t[0] > 0]
    if not readable:
        return size
    smallest, where = min(readable, key=lambda t: (t[0], str(t[1])))
    if smallest < size:
        raise UserError(f"resize: crop takes {size} px crops at native resolution, larger than the smallest image "
                        f"of {label}: {where} ({smallest} px on its shorter side); lower image_size to <= "
                        f"{smallest} or use resize: bilinear")
    return min(2 * size, smallest) if train else size


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


class LiveImages:
    """Decodes from disk on every access, as the usual pipeline does every epoch (`--no-cache`).

    Indexable like the decoded uint8 array it stands in for, so training code does not care.
    """

    def __init__(self, paths: list[str], size: int, resize: str = "bilinear") -> None:
        self.paths, self.size, self.resize = paths, size, resize
        self.shape = (len(paths), 3, size, size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, idx: Any) -> np.ndarray:
        rows = np.arange(len(self.paths))[idx]
        return np.stack([decode_image(Path(self.paths[i]), self.size, self.resize) for i in np.atleast_1d(rows)])
