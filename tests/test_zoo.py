"""The generator zoo (`demo-data --generator FAMILY`): every family deterministic and free of colour shortcuts, the
families different from one another, the reals shared, an unknown family one line."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tune.data.builtin as dd
from tune.cli import main
from tune.data.zoo import DEFAULT, FAMILIES, cues, nets

N, SIZE = 100, 32  # 100 per class at 32 px: a cross-validated colour AUC within about ±0.04, fast


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every family with seed 0, briefly trained (the traces only need to exist, not to be subtle)."""
    mp = pytest.MonkeyPatch()
    mp.setattr(nets, "STEPS", 15)
    mp.setattr(dd, "AE_POOL", 32)
    root = tmp_path_factory.mktemp("zoo")
    try:
        return {f: dd.generate_demo_data(root / f, n_per_class=N, size=SIZE, seed=0, generator=f) and root / f
                for f in FAMILIES}
    finally:
        mp.undo()


def files(root: Path, cls: str = "") -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and f"/{cls}/" in f"/{p.relative_to(root)}"}


def images(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 3, H, W) images of every split, and labels (Fake = 1)."""
    xs, ys = [], []
    for p in sorted(root.rglob("*.jpg")):
        xs.append(np.asarray(Image.open(p).convert("RGB")).transpose(2, 0, 1))
        ys.append(int(p.parent.name == "Fake"))
    return np.stack(xs), np.array(ys)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_is_deterministic(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nets, "STEPS", 5)
    monkeypatch.setattr(dd, "AE_POOL", 16)
    for run in ("a", "b"):
        dd.generate_demo_data(tmp_path / run, n_per_class=4, size=SIZE, seed=1, tiles_seed=0, generator=name)
    assert files(tmp_path / "a") == files(tmp_path / "b")
    manifest = json.loads((tmp_path / "a" / dd.MANIFEST).read_text())
    assert manifest.get("family", DEFAULT) == name  # the default's manifest stays the original one, without the key


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_has_no_colour_or_size_shortcut(name: str, zoo: dict[str, Path]) -> None:
    x, y = images(zoo[name])
    assert x.shape[1:] == (3, SIZE, SIZE)  # every image of both classes the same size (np.stack would fail else)
    auc = cues.colour_auc_cv(x, y)
    assert auc <= 0.65, f"{name}: colour statistics separate the classes (AUC {auc:.3f})"


def test_families_share_the_reals_and_differ_in_the_fakes(zoo: dict[str, Path]) -> None:
    """Same seed: the same crops, masks and JPEG qualities for every family, so the reals are the same files and
    the fakes differ only by how they were synthesized."""
    reals = {f: files(root, "Real") for f, root in zoo.items()}
    fakes = {f: files(root, "Fake") for f, root in zoo.items()}
    manifests = {f: json.loads((root / dd.MANIFEST).read_text()) for f, root in zoo.items()}
    for a, b in combinations(FAMILIES, 2):
        assert reals[a] == reals[b]
        assert manifests[a]["images"] == manifests[b]["images"] and manifests[a]["tiles"] == manifests[b]["tiles"]
        assert all(fakes[a][k] != fakes[b][k] for k in fakes[a]), (a, b)


def test_a_trace_statistic_separates_families(zoo: dict[str, Path]) -> None:
    """Smoothness (the fakes' mean absolute Laplacian over the reals') tells the up-sampling families from the two
    without up-sampling: the decoders blur (0.48-0.61 of the reals' here), the denoiser's residual noise and the random
    phases keep the reals' sharpness (1.02, 1.04 here; at 128 px, where no resize blurs it, 1.6-1.7). So the
    smoothness cue that catches one group says nothing, or the opposite, about the other."""
    x, y = images(zoo[DEFAULT])
    real = cues.laplacian(x[y == 0]).mean()
    ratio = {}
    for f, root in zoo.items():
        x, y = images(root)
        ratio[f] = cues.laplacian(x[y == 1]).mean() / real
    assert all(ratio[f] < 0.75 for f in ("tconv", "nearest", "bilinear", "pixelshuffle")), ratio
    assert all(ratio[f] > 0.9 for f in ("denoiser", "spectral")), ratio


def test_unknown_family_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo-data", "--out", str(tmp_path / "out"), "--generator", "stylegan9"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "stylegan9" in err and "tconv" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()

