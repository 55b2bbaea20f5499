"""One image, a file or its bytes, to the uint8 (3, S, S) RGB array every model input is made of; and
LiveImages, which does that at every access (`--no-cache`)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile

MAX_PIXELS = 64_000_000  # refuse decompression bombs (PIL's own default warns at 89 M)


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
