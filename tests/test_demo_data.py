"""The built-in demo dataset: layout, determinism, no leakage between splits, argument errors."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tune.data.builtin as dd
from tune.core import UserError
from tune.data.zoo import nets

N, SIZE, SEED = 10, 48, 3  # 10 per class -> 6/2/2 train/valid/test


@pytest.fixture(scope="module")
def fast_ae() -> object:
    """A few autoencoder steps are enough to exercise the pipeline; the full 300 cost ~10 s each time."""
    mp = pytest.MonkeyPatch()
    mp.setattr(nets, "STEPS", 15)
    mp.setattr(dd, "AE_POOL", 32)
    yield
    mp.undo()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, fast_ae: object) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo") / "data"
    return out, dd.generate_demo_data(out, n_per_class=N, size=SIZE, seed=SEED)


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def overlap(a: list[int], b: list[int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_split_counts() -> None:
    assert dd.split_counts(500) == {"train": 350, "valid": 75, "test": 75}
    assert dd.split_counts(3) == {"train": 1, "valid": 1, "test": 1}
    for n in range(3, 60):
        c = dd.split_counts(n)
        assert sum(c.values()) == n and min(c.values()) >= 1


def test_layout_and_counts(demo: tuple[Path, dict]) -> None:
    out, summary = demo
    want = dd.split_counts(N)
    assert summary["counts"] == {s: {"Fake": want[s], "Real": want[s]} for s in dd.SPLITS}
    assert summary["seconds"] > 0 and len(summary["sources"]) >= 1
    for split in dd.SPLITS:
        assert sorted(p.name for p in (out / split).iterdir()) == ["Fake", "Real"]
        for cls in ("Fake", "Real"):
            assert len(list((out / split / cls).glob("*.jpg"))) == want[split]
    assert sorted(p.name for p in out.iterdir()) == sorted([*dd.SPLITS, dd.MANIFEST])
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temp folders left behind
    manifest = json.loads((out / dd.MANIFEST).read_text())
    assert len(manifest["images"]) == 2 * N
    assert {r["file"] for r in manifest["images"]} == {
        str(p.relative_to(out)) for p in out.rglob("*.jpg")}
    assert any(r.get("mode") for r in manifest["images"] if r["class"] == "Fake")


def test_images_are_rgb_jpegs_at_size(demo: tuple[Path, dict]) -> None:
    out, _ = demo
    for p in out.rglob("*.jpg"):
        with Image.open(p) as im:
            assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (SIZE, SIZE))


def test_same_seed_same_bytes(demo: tuple[Path, dict], tmp_path: Path, fast_ae: object) -> None:
    out, _ = demo
    threads = torch.get_num_threads()
    again = tmp_path / "again"
    dd.generate_demo_data(again, n_per_class=N, size=SIZE, seed=SEED)
    assert files(again) == files(out)
    assert torch.get_num_threads() == threads  # the single-thread section restores the setting


def test_other_seed_other_images(demo: tuple[Path, dict], tmp_path: Path, fast_ae: object) -> None:
    other = tmp_path / "other"
    dd.generate_demo_data(other, n_per_class=3, size=32, seed=SEED + 1)
    a, b = files(demo[0]), files(other)
    assert a["train/Real/0000.jpg"] != b["train/Real/0000.jpg"]


def test_manifest_crops_never_cross_splits(demo: tuple[Path, dict]) -> None:
    manifest = json.loads((demo[0] / dd.MANIFEST).read_text())
    for tiles in manifest["tiles"].values():  # a source's tiles are dealt out, never shared
        for s, t in combinations(dd.SPLITS, 2):
            assert not any(overlap(a, b) for a in tiles[s] for b in tiles[t])
    for r in manifest["images"]:  # and every crop lies inside one tile of its own split
        assert any(t[0] <= r["box"][0] and t[1] <= r["box"][1] and r["box"][2] <= t[2] and r["box"][3] <= t[3]
                   for t in manifest["tiles"][r["source"]][r["split"]])
    by_source: dict[str, list[dict]] = {}
    for r in manifest["images"]:
        by_source.setdefault(r["source"], []).append(r)
    for records in by_source.values():
        for a, b in combinations(records, 2):
            assert a["split"] == b["split"] or not overlap(a["box"], b["box"])


def test_many_crops_never_cross_splits() -> None:
    """The same check on many more crops than a test dataset holds, without the slow fake generator."""
    rng = np.random.default_rng(0)
    for name, photo in dd.load_sources().items():
        tiles = dd.split_tiles(*photo.shape[:2], rng)
        assert all(tiles[s] for s in dd.SPLITS), name
        boxes = {s: [dd.draw_crop(photo, tiles[s], rng)[1] for _ in range(40)] for s in dd.SPLITS}
        for s, t in combinations(dd.SPLITS, 2):
            assert not any(overlap(a, b) for a in boxes[s] for b in boxes[t]), (name, s, t)


def test_sources_load_offline() -> None:
    names = set(dd.load_sources())
    assert {"sklearn.china.jpg", "sklearn.flower.jpg", "matplotlib.grace_hopper.jpg"} <= names
    assert len(names) >= 8


@pytest.mark.parametrize("kwargs, message", [
    ({"n_per_class": 2}, "at least 3"),
    ({"n_per_class": 10.0}, "integer"),
    ({"n_per_class": True}, "integer"),
    ({"size": 16}, "between 32"),
    ({"seed": -1}, ">= 0"),
])
def test_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        dd.generate_demo_data(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_refuses_to_overwrite_foreign_paths(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        dd.generate_demo_data(tmp_path / "file", n_per_class=3, size=32)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a demo dataset"):
        dd.generate_demo_data(tmp_path / "mine", n_per_class=3, size=32)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_replaces_empty_folder_and_previous_dataset(tmp_path: Path, fast_ae: object) -> None:
    out = tmp_path / "data"
    out.mkdir()
    dd.generate_demo_data(out, n_per_class=3, size=32)
    dd.generate_demo_data(out, n_per_class=4, size=32)  # a rerun replaces its own earlier output
    assert len(list(out.glob("train/Real/*.jpg"))) == dd.split_counts(4)["train"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_interrupted_run_leaves_nothing(tmp_path: Path, fast_ae: object,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def failing_finish(img: np.ndarray, size: int, quality: int) -> bytes:
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return b"partial"

    monkeypatch.setattr(dd, "finish", failing_finish)
    with pytest.raises(KeyboardInterrupt):
        dd.generate_demo_data(tmp_path / "data", n_per_class=3, size=32)
    assert list(tmp_path.iterdir()) == []


def test_three_generator_protocol_shares_no_region_across_roles(tmp_path: Path, fast_ae: object) -> None:
    """The protocol of docs/heldout.md: train and valid from seed 0, held-out validation from seed 1's valid split,
    test from seed 2's test split, every generator cutting the photos with tiles seed 0. No crop of one role
    overlaps a crop of another in any photo (valid and held-out share the valid tiles: both only validate), and no
    file is byte-identical across roles; the generators differ (their fakes), the reals are other crops of the same
    photos. Without the common tiles seed, seed 1's valid tiles overlap seed 0's train tiles."""
    from tune.data.heldout import shared

    data = {s: tmp_path / f"gen{s}" for s in (0, 1, 2)}
    for s, out in data.items():
        dd.generate_demo_data(out, n_per_class=N, size=SIZE, seed=s, tiles_seed=0)
    manifests = {s: json.loads((out / dd.MANIFEST).read_text()) for s, out in data.items()}
    assert manifests[0]["tiles"] == manifests[1]["tiles"] == manifests[2]["tiles"]
    roles = {"train": (0, "train"), "valid": (0, "valid"), "held-out": (1, "valid"), "test": (2, "test")}
    crops = {role: [(r["source"], r["box"]) for r in manifests[s]["images"] if r["split"] == split]
             for role, (s, split) in roles.items()}
    for a, b in combinations(roles, 2):
        if {a, b} != {"valid", "held-out"}:
            assert not any(sa == sb and overlap(ba, bb) for sa, ba in crops[a] for sb, bb in crops[b]), (a, b)
    images = {role: sorted(str(p) for p in (data[s] / split).rglob("*.jpg")) for role, (s, split) in roles.items()}
    assert all(not shared(images[a], images[b]) for a, b in combinations(roles, 2))
    assert files(data[0])["test/Fake/0000.jpg"] != files(data[2])["test/Fake/0000.jpg"]
    own = tmp_path / "own_tiles"
    dd.generate_demo_data(own, n_per_class=3, size=32, seed=1)
    tiles_1 = json.loads((own / dd.MANIFEST).read_text())["tiles"]
    assert any(overlap(a, b) for name, t in tiles_1.items() for a in t["valid"]
               for b in manifests[0]["tiles"][name]["train"])
