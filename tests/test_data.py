"""Dataset discovery, bad-input errors, decoding of odd image modes, the decoded cache, augmentation."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tune.data.decode as decode
import tune.data.images as data
from tune import FAKE, REAL
from tune.core import UserError
from tune.data.augment import AUGMENTATIONS, AugSpec, augment, augment_images, parse_augment
from tune.data.images import DataError, fingerprint, load_split, scan_split

SIZE = 32


def noise(seed: int = 0, size: int = 16, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).convert(mode)


def png_bytes(seed: int = 0, size: int = 24) -> bytes:
    buf = io.BytesIO()
    noise(seed, size).save(buf, "PNG")
    return buf.getvalue()


def jpeg_bytes(seed: int = 0, size: int = 24) -> bytes:
    buf = io.BytesIO()
    noise(seed, size).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def layout(root: Path, split: str = "train", classes: tuple[str, str] = ("Fake", "Real"), n: int = 2) -> Path:
    """root/split/{classes}/img_i.png with n small images each."""
    for k, cls in enumerate(classes):
        d = root / split / cls
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (d / f"img_{i}.png").write_bytes(png_bytes(10 * k + i))
    return root


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid-looking PNG whose header claims width x height pixels (the data is a few bytes)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------- layout discovery
@pytest.mark.parametrize("split,folder", [("train", "TRAIN"), ("valid", "valid"), ("valid", "Validation"),
                                          ("valid", "VAL"), ("test", "Test")])
def test_split_aliases_and_case(tmp_path: Path, split: str, folder: str) -> None:
    layout(tmp_path, folder, classes=("FAKE", "real"), n=2)
    f = scan_split(tmp_path, split)
    assert f.split == split
    assert len(f.paths) == 4
    assert f.labels == [FAKE, FAKE, REAL, REAL]
    assert all(p.parent.parent.name == folder for p in f.paths)
    assert [p.parent.name for p in f.paths] == ["FAKE", "FAKE", "real", "real"]


def test_extensions_ignored_files_and_nesting(tmp_path: Path) -> None:
    layout(tmp_path, n=1)
    fake = tmp_path / "train" / "Fake"
    for ext, fmt in [(".jpg", "JPEG"), (".jpeg", "JPEG"), (".bmp", "BMP"), (".webp", "WEBP"), (".JPG", "JPEG"),
                     (".PNG", "PNG")]:
        noise(3).save(fake / f"x{ext}", fmt)
    (fake / "a" / "b").mkdir(parents=True)
    noise(4).save(fake / "a" / "b" / "deep.png")
    for junk in ("notes.txt", ".DS_Store", "anim.gif", "Thumbs.db"):
        (fake / junk).write_bytes(b"not an image")
    (tmp_path / "train" / "Real" / "README").write_text("hello")
    f = scan_split(tmp_path, "train")
    names = sorted(p.name for p, lab in zip(f.paths, f.labels) if lab == FAKE)
    assert names == sorted(["img_0.png", "x.jpg", "x.jpeg", "x.bmp", "x.webp", "x.JPG", "x.PNG", "deep.png"])
    assert f.ignored == 5
    s = load_split(tmp_path, "train", SIZE)
    assert s.x.shape == (9, 3, SIZE, SIZE) and s.x.dtype == np.uint8
    assert s.skipped == []


def test_nested_only_layout_fingerprints(tmp_path: Path) -> None:
    """Images only in sub-folders of the first class folder (paths[0] is two levels deep)."""
    layout(tmp_path, n=2)
    fake = tmp_path / "train" / "Fake"
    (fake / "sub").mkdir()
    for p in sorted(fake.glob("*.png")):
        p.rename(fake / "sub" / p.name)
    s = load_split(tmp_path, "train", SIZE)
    assert len(s) == 4 and len(s.fingerprint) == 20


def test_symlink_loops_do_not_hang_or_duplicate(tmp_path: Path) -> None:
    layout(tmp_path, n=2)
    fake = tmp_path / "train" / "Fake"
    (fake / "sub").mkdir()
    noise(5).save(fake / "sub" / "s.png")
    os.symlink(".", fake / "self")  # loop onto itself
    os.symlink("..", fake / "sub" / "up")  # loop onto its parent (Fake)
    os.symlink("..", fake / "split")  # onto the split folder: must not pull Real/ in as Fake
    os.symlink("../..", fake / "root")  # onto the data root
    os.symlink("sub", fake / "alias")  # the same folder twice
    f = scan_split(tmp_path, "train")
    fakes = [p for p, lab in zip(f.paths, f.labels) if lab == FAKE]
    assert sorted(p.name for p in fakes) == ["img_0.png", "img_1.png", "s.png"]
    assert f.labels.count(REAL) == 2
    assert len({p.resolve() for p in f.paths}) == len(f.paths) == 5


def test_symlinked_class_folder_elsewhere_is_followed(tmp_path: Path) -> None:
    layout(tmp_path / "store", split="x", n=2)
    (tmp_path / "data" / "train").mkdir(parents=True)
    os.symlink(tmp_path / "store" / "x" / "Fake", tmp_path / "data" / "train" / "Fake")
    os.symlink(tmp_path / "store" / "x" / "Real", tmp_path / "data" / "train" / "Real")
    s = load_split(tmp_path / "data", "train", SIZE)
    assert list(s.y) == [FAKE, FAKE, REAL, REAL]
    assert s.paths[0].startswith(str(tmp_path / "data" / "train" / "Fake"))


# --------------------------------------------------------------------------- layout errors
def _missing_data(root: Path) -> Path:
    return root / "nope"


def _data_is_file(root: Path) -> Path:
    root.mkdir()
    (root / "data.zip").write_bytes(b"zip")
    return root / "data.zip"


def _missing_split(root: Path) -> Path:
    layout(root, "test")
    return root


def _split_is_file(root: Path) -> Path:
    root.mkdir(exist_ok=True)
    (root / "train").write_text("x")
    return root


def _missing_class(root: Path) -> Path:
    layout(root, classes=("Fake", "Other"))
    return root


def _empty_class(root: Path) -> Path:
    layout(root, classes=("Fake",))
    (root / "train" / "Real").mkdir()
    (root / "train" / "Real" / "notes.txt").write_text("no images here")
    return root


def _empty_class_dir(root: Path) -> Path:
    layout(root, classes=("Real",))
    (root / "train" / "Fake").mkdir()
    return root


def _class_is_file(root: Path) -> Path:
    layout(root, classes=("Fake",))
    (root / "train" / "Real").write_text("x")
    return root


LAYOUT_ERRORS = [
    (_missing_data, "data folder not found", "nope"),
    (_data_is_file, "is a file", "data.zip"),
    (_missing_split, "missing split folder", "train"),
    (_split_is_file, "split path is a file", "train"),
    (_missing_class, "missing class folder", "Real"),
    (_empty_class, "empty class folder", "Real"),
    (_empty_class_dir, "empty class folder", "Fake"),
    (_class_is_file, "class path is a file", "Real"),
]


@pytest.mark.parametrize("make,what,where", LAYOUT_ERRORS, ids=[m.__name__[1:] for m, _, _ in LAYOUT_ERRORS])
def test_layout_errors(tmp_path: Path, make, what: str, where: str) -> None:
    root = make(tmp_path / "d")
    with pytest.raises(DataError) as e:
        load_split(root, "train", SIZE)
    assert isinstance(e.value, UserError)
    msg = str(e.value)
    assert what in msg
    assert str(tmp_path / "d") in msg and where in msg
    assert "\n" not in msg


def test_unlistable_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layout(tmp_path, n=1)
    real_iterdir = Path.iterdir

    def iterdir(self: Path):
        if self.name == "train":
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    with pytest.raises(DataError, match=f"cannot list folder {tmp_path / 'train'}: permission denied"):
        scan_split(tmp_path, "train")


def test_error_messages_say_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"expected ROOT/\{train,valid,test\}/\{Fake,Real\}"):
        scan_split(tmp_path / "nope", "train")
    layout(tmp_path / "a", "test")
    with pytest.raises(DataError, match="valid, validation, val"):
        scan_split(tmp_path / "a", "valid")
    layout(tmp_path / "b", classes=("Fake",))
    (tmp_path / "b" / "train" / "Real").mkdir()
    with pytest.raises(DataError, match=r"\.bmp, \.jpeg, \.jpg, \.png, \.webp"):
        scan_split(tmp_path / "b", "train")


# --------------------------------------------------------------------------- bad images
def add_bad_images(root: Path) -> list[Path]:
    fake, real = root / "train" / "Fake", root / "train" / "Real"
    bad = {
        fake / "corrupt.png": b"this is not a png at all" * 10,
        fake / "half.png": png_bytes(7)[: len(png_bytes(7)) // 2],
        real / "half.jpg": jpeg_bytes(8)[: len(jpeg_bytes(8)) // 2],
        real / "empty.jpeg": b"",
    }
    for p, b in bad.items():
        p.write_bytes(b)
    broken = fake / "broken_link.png"  # unreadable: a dangling symlink
    os.symlink(root / "missing.png", broken)
    return sorted([*bad, broken])


def test_all_bad_images_listed_in_one_error(tmp_path: Path) -> None:
    layout(tmp_path, n=2)
    bad = add_bad_images(tmp_path)
    with pytest.raises(DataError) as e:
        load_split(tmp_path, "train", SIZE)
    msg = str(e.value)
    assert msg.startswith(f"{len(bad)} bad image(s)")
    for p in bad:
        assert str(p) in msg
    assert "zero bytes" in msg and "--skip-bad-images" in msg
    assert "\n" not in msg


def test_skip_bad_images(tmp_path: Path) -> None:
    layout(tmp_path, n=2)
    bad = add_bad_images(tmp_path)
    s = load_split(tmp_path, "train", SIZE, skip_bad=True)
    assert len(s) == 4 and s.x.shape == (4, 3, SIZE, SIZE)
    assert sorted(s.skipped) == sorted(map(str, bad))
    assert list(s.y) == [FAKE, FAKE, REAL, REAL]
    assert not set(s.paths) & set(s.skipped)


def test_skip_bad_but_a_class_has_nothing_left(tmp_path: Path) -> None:
    layout(tmp_path, classes=("Fake",), n=2)
    (tmp_path / "train" / "Real").mkdir()
    (tmp_path / "train" / "Real" / "x.png").write_bytes(b"junk")
    with pytest.raises(DataError, match="no readable Real images"):
        load_split(tmp_path, "train", SIZE, skip_bad=True)


def test_decompression_bomb_header_refused(tmp_path: Path) -> None:
    layout(tmp_path, n=1)
    bomb = tmp_path / "train" / "Fake" / "bomb.png"
    bomb.write_bytes(bomb_png())
    with pytest.raises(DataError, match="decompression bomb") as e:
        load_split(tmp_path, "train", SIZE)
    assert str(bomb) in str(e.value)


def test_max_pixels_is_enforced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layout(tmp_path, n=1)  # 24x24 = 576 pixels each
    monkeypatch.setattr(decode, "MAX_PIXELS", 500)  # read where images are decoded
    with pytest.raises(DataError, match=r"2 bad image\(s\).*decompression bomb refused \(24x24"):
        load_split(tmp_path, "train", SIZE)
    monkeypatch.setattr(decode, "MAX_PIXELS", 576)  # read where images are decoded
    assert len(load_split(tmp_path, "train", SIZE)) == 2


def test_image_modes_become_rgb_uint8(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    Image.new("L", (20, 12), 77).save(d / "gray.png")
    Image.new("RGBA", (20, 12), (10, 20, 30, 255)).save(d / "rgba.png")
    Image.new("RGBA", (20, 12), (10, 20, 30, 0)).save(d / "clear.png")
    Image.new("LA", (20, 12), (90, 255)).save(d / "la.png")
    pal = Image.new("P", (20, 12), 1)
    pal.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    pal.save(d / "pal.png")
    pal.save(d / "pal_t.png", transparency=0)
    Image.new("CMYK", (20, 12), (0, 0, 0, 0)).save(d / "cmyk.jpg")
    arr16 = np.full((12, 20), 128 * 257, dtype=np.uint16)  # mid-grey in 16 bits
    Image.fromarray(arr16).save(d / "grey16.png")
    ramp = (np.arange(20, dtype=np.uint32) * 3000).astype(np.uint16)[None].repeat(12, 0)
    Image.fromarray(ramp).save(d / "ramp16.png")
    assert Image.open(d / "grey16.png").mode.startswith("I")
    expect = {"gray": 77, "rgba": (10, 20, 30), "clear": (10, 20, 30), "la": 90, "pal": (200, 100, 50),
              "pal_t": (200, 100, 50), "cmyk": 255, "grey16": 128}
    for name, rgb in expect.items():
        x = data.decode_image(next(d.glob(f"{name}.*")), SIZE)
        assert x.shape == (3, SIZE, SIZE) and x.dtype == np.uint8, name
        want = np.broadcast_to(np.asarray(rgb, dtype=np.uint8).reshape(-1, 1, 1), x.shape)
        assert np.abs(x.astype(int) - want).max() <= 1, (name, x[:, 0, 0])
    x = data.decode_image(d / "ramp16.png", SIZE)
    assert x.dtype == np.uint8 and x[0, 0, 0] < 5 and 200 <= x[0, 0, -1] <= 225  # 57000/65535*255 = 222
    assert (np.diff(x[0, 0].astype(int)) >= 0).all()


# --------------------------------------------------------------------------- decoded cache, fingerprints
def test_decoded_cache_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layout(tmp_path / "d", n=3)
    cache = tmp_path / "c"
    first = load_split(tmp_path / "d", "train", SIZE, cache_dir=cache)
    assert len(list(cache.glob("decoded-*.npy"))) == 1

    def boom(*_a, **_k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(data, "decode_image", boom)
    again = load_split(tmp_path / "d", "train", SIZE, cache_dir=cache)
    assert isinstance(again.x, data.MappedImages) and isinstance(again.x[:2], np.memmap)
    assert np.array_equal(np.asarray(again.x), first.x)
    assert np.array_equal(again.y, first.y) and again.paths == first.paths
    assert again.fingerprint == first.fingerprint
    with pytest.raises(AssertionError, match="decoded again"):  # another size is another entry
        load_split(tmp_path / "d", "train", 48, cache_dir=cache)


def test_cache_remembers_skipped_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layout(tmp_path / "d", n=2)
    (tmp_path / "d" / "train" / "Fake" / "junk.png").write_bytes(b"junk")
    cache = tmp_path / "c"
    first = load_split(tmp_path / "d", "train", SIZE, skip_bad=True, cache_dir=cache)
    monkeypatch.setattr(data, "decode_image", None)
    again = load_split(tmp_path / "d", "train", SIZE, skip_bad=True, cache_dir=cache)
    assert again.skipped == first.skipped and len(again) == 4
    with pytest.raises(DataError, match="junk.png"):
        load_split(tmp_path / "d", "train", SIZE, cache_dir=cache)


def test_fingerprint_tracks_bytes_names_and_labels(tmp_path: Path) -> None:
    root = layout(tmp_path, n=2)
    fake = root / "train" / "Fake"

    def fp() -> str:
        return fingerprint(scan_split(root, "train"))

    base = fp()
    assert fp() == base
    b = bytearray((fake / "img_0.png").read_bytes())
    b[-20] ^= 1
    (fake / "img_0.png").write_bytes(bytes(b))
    edited = fp()
    assert edited != base
    (fake / "img_0.png").rename(fake / "img_9.png")
    renamed = fp()
    assert renamed not in (base, edited)
    (fake / "img_9.png").rename(root / "train" / "Real" / "img_9.png")
    assert fp() not in (base, edited, renamed)


def test_changed_file_invalidates_decoded_cache(tmp_path: Path) -> None:
    root = layout(tmp_path / "d", n=2)
    cache = tmp_path / "c"
    a = load_split(root, "train", SIZE, cache_dir=cache)
    (root / "train" / "Fake" / "img_0.png").write_bytes(png_bytes(99))
    b = load_split(root, "train", SIZE, cache_dir=cache)
    assert a.fingerprint != b.fingerprint
    assert not np.array_equal(np.asarray(a.x[0]), np.asarray(b.x[0]))
    assert np.array_equal(np.asarray(a.x[1:]), np.asarray(b.x[1:]))


# --------------------------------------------------------------------------- augmentation
def _image(seed: int = 0, size: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (3, size, size), dtype=np.uint8)


@pytest.mark.parametrize("ops", [("crop",), ("jitter",), ("blur",), ("jpeg",), AUGMENTATIONS])
def test_an_augmentation_is_a_pure_function_of_image_seed_and_view(ops: tuple[str, ...]) -> None:
    img = _image()
    before = img.copy()

    def aug(seed: tuple[int, ...], view: int, image: np.ndarray = img) -> np.ndarray:
        return augment(image, seed=seed, view=view, ops=ops, strength=1.0)

    a = aug((0, 3), 1)
    assert a.dtype == np.uint8 and a.shape == img.shape
    assert np.array_equal(a, aug((0, 3), 1))  # the same arguments, the same pixels
    assert np.array_equal(img, before)  # the input is not touched
    # blur and JPEG are drawn with probability s/2: among views 0..15, some differ from the image, some do not
    views = [aug((0, 3), v) for v in range(16)]
    changed = [not np.array_equal(v, img) for v in views]
    assert any(changed) and (all(changed) if ops[0] in ("crop", "jitter") else not all(changed))
    assert len({v.tobytes() for v in views}) > 4  # views differ from each other
    assert not np.array_equal(aug((0, 3), 1, _image(1)), a)  # another image
    seeds = [aug((s, 3), 5) for s in range(6)]
    assert len({v.tobytes() for v in seeds}) > 2  # the seed changes the draws


def test_augmentation_strength_zero_or_no_ops_is_the_image() -> None:
    img = _image()
    assert augment(img, seed=(0, 0), view=1, ops=AUGMENTATIONS, strength=0.0) is img
    assert augment(img, seed=(0, 0), view=1, ops=(), strength=1.0) is img
    weak = augment(img, seed=(0, 0), view=1, ops=("jitter",), strength=0.05).astype(int)
    strong = augment(img, seed=(0, 0), view=1, ops=("jitter",), strength=1.0).astype(int)
    assert np.abs(weak - img).mean() < np.abs(strong - img).mean()


def test_blur_and_jpeg_augmentation_are_evaluates_perturbations() -> None:
    """One implementation of each: a blurred view is perturb.native's blur of the same sigma."""
    from PIL import Image

    from tune.data.perturb import Condition, native

    img = _image(2)
    u = np.random.default_rng([0, 0, 4]).random(11)  # the draws augment() makes for seed (0, 0), view 4
    out = augment(img, seed=(0, 0), view=4, ops=("blur",), strength=1.0)
    pil = Image.fromarray(img.transpose(1, 2, 0))
    want = img if u[7] >= 0.5 else np.asarray(native(pil, Condition("blur", 0.1 + 2.9 * u[8]))).transpose(2, 0, 1)
    assert np.array_equal(out, want)


def test_unknown_augmentation_is_one_clear_line() -> None:
    assert parse_augment("JPEG, blur") == ("blur", "jpeg")  # application order, any case
    assert parse_augment("all") == AUGMENTATIONS and parse_augment("none") == () == parse_augment("")
    with pytest.raises(UserError, match=r"unknown augmentation 'sharpen' in augment='blur,sharpen': expected a "
                                        r"comma-separated list of crop, jitter, blur, jpeg"):
        parse_augment("blur,sharpen")


def test_augment_images_matches_augment_per_image() -> None:
    x = np.stack([_image(i, 32) for i in range(5)])
    spec = AugSpec(AUGMENTATIONS, 0.7, seed=3)
    idx = np.array([1, 4])
    got = augment_images(x, idx, spec, view=2)
    for j, i in enumerate(idx):
        assert np.array_equal(got[j], augment(x[i], seed=(3, int(i)), view=2, ops=AUGMENTATIONS, strength=0.7))
    assert np.array_equal(augment_images(x, idx, AugSpec((), 1.0, 3), view=2), x[idx])
