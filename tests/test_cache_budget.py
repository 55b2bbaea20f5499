"""Feature caches with a budget: least-recently-used eviction that never removes a file in use, training
live (with one line) when the budget or the disk has no room, float16 storage, and `cache ls|clear`."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_dataset

from tune.cli import main
from tune.data.images import load_split
from tune.training import cache, store
from tune.training.config import TrainConfig
from tune.training.loop import fit

CFG = TrainConfig.of(arch="mobilenet_v2", weights="none", epochs=1, image_size=32, unfrozen_blocks=1, batch_size=8,
                     threads=1)


@pytest.fixture
def data(tmp_path: Path):
    root = make_dataset(tmp_path / "data", n=6, size=32, splits=("train", "valid"))
    return load_split(root, "train", 32), load_split(root, "valid", 32)


def build(folder: Path, name: str, nbytes: int, *, fill=None) -> tuple[object, str]:
    def ones(mm: np.ndarray) -> None:
        mm[:] = 1

    return store.get_or_build(folder / f"features-{name}.npy", (nbytes,), "uint8", fill or ones, {"arch": name})


def stored_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


def test_the_budget_evicts_least_recently_used_first_and_never_a_file_in_use(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "features"
    monkeypatch.setenv(store.BUDGET_ENV, str(3.5e-6))  # 3,500 bytes: three 1,000-byte files and their headers
    leases = {}
    for i, name in enumerate("abc"):
        lease, why = build(f, name, 1000)
        assert lease is not None and why == ""
        leases[name] = lease
        os.utime(f / f"features-{name}.npy", (100 + i, 100 + i))  # a used first, then b, then c
    for name in "bc":
        leases.pop(name).close()  # a stays in use (a trial is reading it); b and c are free
    lease, _ = build(f, "d", 1000)  # needs one file's room: the least recently used free one (b) goes
    assert lease is not None
    assert [p.name for p in store.stored_files(f)] == ["features-a.npy", "features-c.npy", "features-d.npy"]
    assert store.lease(f / "features-c.npy") is not None  # a lease touches its file: now c is the newest
    os.utime(f / "features-d.npy", (200, 200))
    lease.close()
    assert build(f, "e", 1000)[0] is not None  # d is now the oldest free file; a (older, in use) stays
    assert [p.name for p in store.stored_files(f)] == ["features-a.npy", "features-c.npy", "features-e.npy"]
    # a budget of files in use: nothing can go, so nothing is built, and the reason says so
    held = [store.lease(p) for p in store.stored_files(f)]
    lease, why = build(f, "x", 1000)
    assert lease is None and "taken by files in use" in why and not (f / "features-x.npy").exists()
    assert all(h is not None for h in held)


def test_one_builder_per_file_the_others_wait_and_share_it(tmp_path: Path) -> None:
    calls = []

    def slow(mm: np.ndarray) -> None:
        calls.append(1)
        time.sleep(0.3)
        mm[:] = 7

    got = []
    threads = [threading.Thread(target=lambda: got.append(build(tmp_path, "s", 100, fill=slow)[0]))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and all(g is not None for g in got)
    assert np.load(tmp_path / "features-s.npy").tolist() == [7] * 100


def test_a_budget_smaller_than_a_file_trains_live_with_one_line(data, tmp_path: Path, capsys,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(store.BUDGET_ENV, "1e-9")  # 1 byte
    live = fit(CFG.replace(use_cache=False), *data, log=None)
    capsys.readouterr()
    r = fit(CFG, *data, cache_dir=tmp_path / "f", log=None)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[cache]")]
    assert len(lines) == 1 and "live: it needs" in lines[0] and "more than the whole cache budget" in lines[0], lines
    assert r.cache_mode.startswith("live: it needs") and store.stored_files(tmp_path / "f") == []
    assert [h["val_loss"] for h in r.history] == [h["val_loss"] for h in live.history]  # live: the same numbers


@pytest.mark.parametrize("where", ["allocate", "write"])
def test_a_full_disk_leaves_no_partial_file_and_the_trial_goes_on_live(data, tmp_path: Path, capsys, where: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "allocate":
        monkeypatch.setattr(store, "allocate", full)
    else:  # the first batch is written, then the disk fills
        real = cache.run_units

        def half(model, x, start, *, flip=False, out=None):
            if out is not None:
                out[:4] = real(model, x[:4], start, flip=flip)
                full()
            return real(model, x, start, flip=flip, out=out)

        monkeypatch.setattr(cache, "run_units", half)
    folder = tmp_path / "f"
    r = fit(CFG.replace(epochs=2), *data, cache_dir=folder, log=None)
    assert len(r.history) == 2 and np.isfinite(r.history[-1]["val_loss"])
    assert stored_names(folder) == []  # no .npy, no temporary file, no sidecar
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[cache]")]
    assert len(lines) == 1 and "the disk is full" in lines[0], lines


def test_the_cache_key_changes_with_the_dtype_and_float16_is_half_the_disk(data, tmp_path: Path) -> None:
    folder = tmp_path / "f"
    train, valid = data
    from tune.training.loop import make_model

    # real ImageNet weights: activations of order 1, as float16 is meant for (random weights here give 1e-9,
    # below float16's smallest normal number)
    model = make_model(TrainConfig.of(arch="efficientnet_lite0", image_size=32, unfrozen_blocks=3))
    z32 = cache.cached_encode(model, valid, flips=(False,), cache_dir=folder)[0]
    z16 = cache.cached_encode(model, valid, flips=(False,), cache_dir=folder, dtype="float16")[0]
    files = store.stored_files(folder)
    assert len(files) == 2 and z32.dtype == np.float32 and z16.dtype == np.float16
    small, big = sorted(p.stat().st_size for p in files)
    assert small - 128 < (big - 128) / 2 + 64
    np.testing.assert_allclose(z16.astype(np.float32), z32, rtol=1e-3, atol=1e-3 * float(np.abs(z32).max()))


def test_float16_features_give_the_float32_val_auc_within_0_005(tmp_path: Path, one_thread) -> None:
    from tune.data.builtin import generate_demo_data

    generate_demo_data(tmp_path / "data", n_per_class=100, size=64, seed=0)
    train, valid = (load_split(tmp_path / "data", s, 64) for s in ("train", "valid"))
    cfg = TrainConfig.of(arch="efficientnet_lite0", image_size=64, unfrozen_blocks=4, epochs=2, batch_size=32,
                         lr=1e-3, head_sizes=(), threads=1)
    auc = {d: [h["val_auc"] for h in fit(cfg.replace(cache_dtype=d), train, valid, cache_dir=tmp_path / "f",
                                            log=None).history] for d in ("float32", "float16")}
    assert max(abs(a - b) for a, b in zip(auc["float32"], auc["float16"], strict=True)) <= 0.005, auc
    assert auc["float32"][-1] > 0.6, auc  # it learned something: the comparison means something


def test_cache_ls_and_clear(data, tmp_path: Path, capsys) -> None:
    root = tmp_path / "c"
    from tune.training.loop import make_model

    model = make_model(CFG)
    train, valid = data
    kept = cache.cached_encode(model, valid, flips=(False,), cache_dir=root / "features", label="mobilenet_v2")
    cache.cached_encode(model, train, flips=(False,), cache_dir=root / "features", dtype="float16", label="m",
                        spec=CFG.replace(augment="blur").aug, view=1)
    (root / "decoded").mkdir()
    np.save(root / "decoded" / "decoded-v2-abc-32.npy", np.zeros((2, 3, 32, 32), np.uint8))
    assert main(["cache", "ls", "--cache-dir", str(root), "--kind", "features", "views", "decoded"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {ln.split()[0]: ln.split() for ln in out[1:-1]}
    assert set(rows) == {"features", "views", "decoded"}, out
    assert rows["features"][1:4] == ["mobilenet_v2", str(len(model.frozen)), "float32"]
    assert rows["views"][1:4] == ["m", str(len(model.frozen)), "float16"]
    assert rows["features"][-1] == "use)" and rows["views"][-1] != "use)"  # `kept` holds valid's features
    assert out[-1].startswith("3 file(s)")
    assert main(["cache", "clear", "--cache-dir", str(root), "--older-than", "1d"]) == 0
    assert capsys.readouterr().out.startswith("freed 0 file(s)")  # all used just now
    assert main(["cache", "clear", "--cache-dir", str(root)]) == 0
    assert capsys.readouterr().out.strip().endswith("kept 1 in use")  # valid's features: `kept` holds them
    assert len(store.stored_files(root / "features")) == 1 and (root / "decoded" / "decoded-v2-abc-32.npy").exists()
    del kept
    assert main(["cache", "clear", "--cache-dir", str(root), "--kind", "features", "decoded"]) == 0
    assert capsys.readouterr().out.startswith("freed 2 file(s)")
    assert store.stored_files(root / "features") == [] and not list((root / "decoded").iterdir())
    assert main(["cache", "clear", "--cache-dir", str(root), "--older-than", "soon"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: bad --older-than 'soon'") and "\n" not in err
