"""A built-in, offline, deterministic real-vs-fake dataset: `python -m tune demo-data --out DIR`.

Reals are random crops (position, scale, horizontal flip) of colour photographs that ship inside
our dependencies (scikit-image, scikit-learn, matplotlib), so nothing is downloaded.

Fakes imitate the AutoGAN simulator (Zhang, Karaman & Chang 2019) by default: a small convolutional
autoencoder, trained briefly on crops from the train region, re-synthesizes either the whole crop
or a soft-masked region of it that is blended back (face-swap style). Its transposed convolutions
leave the up-sampling traces that real detectors learn to see. `generator` picks another family of
the zoo (tune/data/zoo/), whose synthesis leaves other traces; with one seed, every family gets the
same crops, masks and JPEG qualities, so the reals are the same files and only the fakes differ.

Both classes then get the same resize and random JPEG re-compression, and fakes are colour
corrected to their source crop, so colour statistics, size or file format give nothing away.

Leakage: every photo is cut into tiles and each tile belongs to exactly one split. A crop never
leaves its tile, so train, valid and test never share a pixel of any source photo.

Several generators: each seed trains its own autoencoder (its weights' init and training patches), and
also draws its own crops, fake masks and JPEG qualities. The reals always come from the same photos, so
datasets of several seeds share no pixel across splits only when they cut the photos the same way:
`tiles_seed` (default: the seed) says how, and the three-generator protocol gives every generator the
same one (docs/heldout.md, "Held-out generators").
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from tune.core import UserError
from tune.data.zoo import DEFAULT, Render, family

DEFAULT_N_PER_CLASS = 500
DEFAULT_SIZE = 128
SPLITS: tuple[str, ...] = ("train", "valid", "test")
MANIFEST = "demo_data.json"  # marks a folder as ours, so a rerun may replace it

SKIMAGE_SAMPLES = ("astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry",
                   "retina", "rocket", "stereo_motorcycle")
TILE = 160       # rough side of a source tile in pixels (every photo gets at least 2x2 tiles)
WORK = 128       # resolution crops are brought to and the fake generator works at
MIN_STD = 8.0    # re-draw crops flatter than this (the black borders of retina and hubble)
# Fake strength, tuned with benchmarks/demo_difficulty.py (the generator's own, in tune/data/zoo/nets.py): the
# notebook's fixed CNN reaches a test ROC-AUC of 0.855 (seed 0) and 0.797 (seed 1), so the data is learnable but
# tuning has room to show. More whole-image fakes or higher JPEG quality make fakes easier to catch.
AE_POOL = 192                # train-region crops a generator trains on (drawn for every family: same reals)
WHOLE_SHARE = 0.8            # share of fakes re-synthesized whole; the rest swap a masked region
JPEG_QUALITY = (60, 95)      # inclusive range, drawn per image, same for both classes

Box = tuple[int, int, int, int]  # (left, top, right, bottom) in source pixels, PIL style


def split_counts(n_per_class: int) -> dict[str, int]:
    """70/15/15, rounded, with at least one image per split."""
    n_eval = max(1, round(0.15 * n_per_class))
    return {"train": n_per_class - 2 * n_eval, "valid": n_eval, "test": n_eval}


def load_sources() -> dict[str, np.ndarray]:
    """name -> uint8 (H, W, 3) photo. A sample missing from this install is skipped, not fatal."""
    import matplotlib.cbook  # heavy: the sample photos' packages only when demo-data builds the dataset
    import skimage.data
    from sklearn.datasets import load_sample_images

    def sklearn_sample(name: str) -> np.ndarray:
        bunch = load_sample_images()
        return next(im for im, f in zip(bunch.images, bunch.filenames, strict=True) if Path(f).name == name)

    def matplotlib_sample(name: str) -> np.ndarray:
        with matplotlib.cbook.get_sample_data(name) as f:
            return np.asarray(Image.open(f).convert("RGB"))

    loaders: dict[str, Callable[[], Any]] = {f"skimage.{n}": lambda n=n: getattr(skimage.data, n)()
                                             for n in SKIMAGE_SAMPLES}
    loaders |= {f"sklearn.{n}": lambda n=n: sklearn_sample(n) for n in ("china.jpg", "flower.jpg")}
    loaders["matplotlib.grace_hopper.jpg"] = lambda: matplotlib_sample("grace_hopper.jpg")
    sources = {}
    for name, load in loaders.items():
        try:
            img = load()
        except Exception:  # noqa: BLE001 - an older or trimmed install, or a sample that would need the network
            continue
        img = img[0] if isinstance(img, tuple) else img  # stereo_motorcycle is (left, right, disparity)
        if img.ndim == 3 and img.shape[2] >= 3:
            sources[name] = np.ascontiguousarray(img[..., :3]).astype(np.uint8)
    if not sources:
        raise UserError("no sample photos found (need scikit-image, scikit-learn or matplotlib installed)")
    return sources


def split_tiles(h: int, w: int, rng: np.random.Generator) -> dict[str, list[Box]]:
    """Cut an h x w photo into a grid and deal the tiles 70/15/15 to the splits, at least one each."""
    rows, cols = max(2, h // TILE), max(2, w // TILE)
    tiles = [(c * w // cols, r * h // rows, (c + 1) * w // cols, (r + 1) * h // rows)
             for r in range(rows) for c in range(cols)]
    tiles = [tiles[i] for i in rng.permutation(len(tiles))]
    n_eval = max(1, round(0.15 * len(tiles)))
    return {"valid": tiles[:n_eval], "test": tiles[n_eval:2 * n_eval], "train": tiles[2 * n_eval:]}


def draw_crop(photo: np.ndarray, tiles: list[Box], rng: np.random.Generator) -> tuple[np.ndarray, Box, bool]:
    """A random square inside one tile (random scale from half the tile up), flipped half the time,
    resized to WORK. Returns (uint8 WORK x WORK x 3, box in the photo, flipped)."""
    for _ in range(20):  # retry flat crops; after 20 tries take what we have
        left, top, right, bottom = tiles[rng.integers(len(tiles))]
        most = min(right - left, bottom - top)
        side = int(rng.integers(most // 2, most + 1))
        x = left + int(rng.integers(0, right - left - side + 1))
        y = top + int(rng.integers(0, bottom - top - side + 1))
        crop = photo[y:y + side, x:x + side]
        if crop.std() >= MIN_STD:
            break
    flip = bool(rng.random() < 0.5)
    img = Image.fromarray(crop[:, ::-1] if flip else crop).resize((WORK, WORK), Image.Resampling.BICUBIC)
    return np.asarray(img), (x, y, x + side, y + side), flip


def synthesize(render: Render, crops: np.ndarray,
               rng: np.random.Generator) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Re-synthesize a batch of uint8 crops (N, WORK, WORK, 3) with a zoo family's renderer. Returns fakes and what
    was done to each."""
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        y = render(x)
    # Colour correction, as face-swap pipelines do: match each channel's mean and std to the original.
    dims = (2, 3)
    y = (y - y.mean(dims, keepdim=True)) / (y.std(dims, keepdim=True) + 1e-6)
    y = (y * x.std(dims, keepdim=True) + x.mean(dims, keepdim=True)).clamp(0, 1)
    grid = (torch.arange(WORK).float() + 0.5) / WORK
    masks, info = [], []
    for _ in range(len(crops)):
        if rng.random() < WHOLE_SHARE:
            masks.append(torch.ones(WORK, WORK))
            info.append({"mode": "whole"})
            continue
        # A soft ellipse (a "face"), its feathered edge hides the seam as in face swaps.
        cx, cy = rng.uniform(0.3, 0.7, size=2)
        rx, ry = rng.uniform(0.2, 0.4, size=2)
        feather = rng.uniform(0.15, 0.5)
        d = (((grid[None, :] - cx) / rx) ** 2 + ((grid[:, None] - cy) / ry) ** 2).sqrt()
        masks.append(((1 - d) / feather).clamp(0, 1))
        box = [round(WORK * v) for v in (cx - rx, cy - ry, cx + rx, cy + ry)]
        info.append({"mode": "region", "ellipse": box, "feather": round(float(feather), 3)})
    m = torch.stack(masks)[:, None]
    fakes = (x + m * (y - x)) * 255
    return fakes.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy(), info


def finish(img: np.ndarray, size: int, quality: int) -> bytes:
    """The processing both classes share: resize to `size`, then JPEG at the given quality."""
    pil = Image.fromarray(img)
    if size != WORK:
        pil = pil.resize((size, size), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    pil.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _check_args(out: Path, n_per_class: int, size: int, seed: int, tiles_seed: int) -> None:
    for name, v in (("n-per-class", n_per_class), ("size", size), ("seed", seed), ("tiles-seed", tiles_seed)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
            raise UserError(f"--{name} must be an integer, got {v!r}")
    if n_per_class < 3:
        raise UserError(f"--n-per-class must be at least 3 (one image per split), got {n_per_class}")
    if not 32 <= size <= 1024:
        raise UserError(f"--size must be between 32 and 1024 pixels, got {size}")
    for name, v in (("seed", seed), ("tiles-seed", tiles_seed)):
        if v < 0:
            raise UserError(f"--{name} must be >= 0, got {v}")
    _check_out(out)


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder path")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise UserError(f"--out {out} is a non-empty folder that is not a demo dataset; not overwriting it")


def generate_demo_data(out: Path, *, n_per_class: int = DEFAULT_N_PER_CLASS, size: int = DEFAULT_SIZE,
                       seed: int = 0, tiles_seed: int | None = None, generator: str = DEFAULT) -> dict[str, Any]:
    """Write out/{train,valid,test}/{Fake,Real}/*.jpg plus out/demo_data.json (every image's source,
    crop box and processing). Same arguments, same bytes. Returns a summary of what was written.
    `tiles_seed` (default `seed`) alone decides how the photos are cut and dealt to the splits;
    `generator` is the zoo family that makes the fakes (tune/data/zoo/__init__.py names them)."""
    out = Path(out)
    make = family(generator).make  # an unknown family is one line, before anything is written
    tiles_seed = seed if tiles_seed is None else tiles_seed
    _check_args(out, n_per_class, size, seed, tiles_seed)
    n_per_class, size, seed, tiles_seed = int(n_per_class), int(size), int(seed), int(tiles_seed)  # JSON-safe
    start = time.perf_counter()
    # Separate streams, so changing e.g. the AE's training leaves the crops (and the reals) unchanged; the
    # tiles' stream is the first of tiles_seed's (with tiles_seed == seed, exactly what it always was).
    streams = np.random.SeedSequence(seed).spawn(5)
    r_crops, r_ae, r_fake, r_jpeg = (np.random.default_rng(s) for s in streams[1:])
    r_tiles = np.random.default_rng(np.random.SeedSequence(tiles_seed).spawn(5)[0])
    sources = load_sources()
    names = list(sources)
    tiles = {name: split_tiles(*photo.shape[:2], r_tiles) for name, photo in sources.items()}

    def crop_for(split: str) -> tuple[np.ndarray, dict[str, Any]]:
        name = names[r_crops.integers(len(names))]
        img, box, flip = draw_crop(sources[name], tiles[name][split], r_crops)
        return img, {"source": name, "box": list(box), "flip": flip}

    # Build next to `out` and rename into place: an interrupted run leaves no half-written dataset.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the dataset should be readable like any folder
    old: Path | None = None
    records: list[dict[str, Any]] = []
    numbered: Counter[tuple[str, str]] = Counter()

    def save(split: str, cls: str, img: np.ndarray, meta: dict[str, Any]) -> None:
        quality = int(r_jpeg.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
        rel = f"{split}/{cls}/{numbered[split, cls]:04d}.jpg"
        numbered[split, cls] += 1
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_bytes(finish(img, size, quality))
        records.append({"file": rel, "split": split, "class": cls, "quality": quality, **meta})

    # One thread: float reductions then happen in one fixed order, so the bytes do not depend on
    # the machine's core count or on what else is running.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        render = make(np.stack([crop_for("train")[0] for _ in range(AE_POOL)]), seed, r_ae)
        counts = split_counts(n_per_class)
        for split in SPLITS:
            for _ in range(counts[split]):
                save(split, "Real", *crop_for(split))
            for i in range(0, counts[split], 64):  # fakes in batches: fast, and bounded memory
                chunk = [crop_for(split) for _ in range(min(64, counts[split] - i))]
                done, how = synthesize(render, np.stack([img for img, _ in chunk]), r_fake)
                for img, (_, meta), h in zip(done, chunk, how, strict=True):
                    save(split, "Fake", img, meta | h)
        # The default family's manifest is the original one, key for key: its datasets stay byte-identical.
        family_key = {} if generator == DEFAULT else {"family": generator}
        manifest = {"generator": "tune.data.builtin", **family_key, "seed": seed, "tiles_seed": tiles_seed,
                    "n_per_class": n_per_class, "size": size,
                    "counts": {s: {c: counts[s] for c in ("Fake", "Real")} for s in SPLITS},
                    "sources": names, "tiles": {n: {s: [list(b) for b in t[s]] for s in SPLITS}
                                                for n, t in tiles.items()},
                    "images": records}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        if out.exists():  # an empty folder or a previous demo dataset: swap it out
            _check_out(out)  # again: something may have appeared there while we worked
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            out.rename(old / "data")
        tmp.rename(out)
    except BaseException:
        if old is not None and not out.exists():  # failed between the two renames: put the old one back
            (old / "data").rename(out)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        torch.set_num_threads(threads)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    summary = {k: v for k, v in manifest.items() if k not in ("images", "tiles")}
    return summary | {"out": str(out), "manifest": str(out / MANIFEST),
                      "seconds": round(time.perf_counter() - start, 2)}
