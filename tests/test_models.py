"""MobileNetV2 and the custom CNN through the registry: parameter counts, freezing, weights files (safe
loading), ImageNet weights from the torch cache, and no silent random backbone offline."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest
import torch
from torchvision.models import mobilenet_v2 as tv_mobilenet_v2

import tune.models.detector as models
from tune.core import UserError, file_sha256
from tune.models.detector import count_params
from tune.models.registry import build_model
from tune.models.weights import WeightsUnavailable

MOBILENET_BLOCKS = 19  # len(torchvision mobilenet_v2().features)

HEAD = (16,)


pytestmark = pytest.mark.usefixtures("one_thread")


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def head_count(in_features: int, head_sizes: tuple[int, ...]) -> int:
    total = 0
    for width in (*head_sizes, 1):
        total += in_features * width + width
        in_features = width
    return total


@pytest.fixture(scope="module")
def tv_features_counts() -> list[int]:
    return [n_params(b) for b in tv_mobilenet_v2(weights=None).features]


def features_of(model: models.Detector) -> list[torch.nn.Module]:
    """MobileNetV2's 19 feature blocks, wherever the frozen/body split put them (unit 0 is Normalize + block 0)."""
    units = [*model.frozen, *model.body][:MOBILENET_BLOCKS]
    assert isinstance(units[0][0], models.Normalize)
    return [units[0][1], *units[1:]]


def test_unknown_arch_lists_valid_names() -> None:
    with pytest.raises(UserError, match=r"unknown architecture 'resnet'.*custom_cnn, mobilenet_v2"):
        build_model("resnet")


@pytest.mark.parametrize("bad", [-1, 20, 100])
def test_unfrozen_blocks_out_of_range(bad: int) -> None:
    with pytest.raises(UserError, match=rf"unfrozen_blocks={bad}.*0\.\.19"):
        build_model("mobilenet_v2", weights="none", unfrozen_blocks=bad)


def test_mobilenet_param_counts(tv_features_counts: list[int]) -> None:
    head = 1280 * 16 + 16 + 16 * 1 + 1
    assert head == head_count(1280, HEAD)
    total = sum(tv_features_counts) + head
    frozen_seen = []
    for k in (0, 2, 5, 19):
        model = build_model("mobilenet_v2", weights="none", unfrozen_blocks=k, head_sizes=HEAD)
        trainable, frozen = count_params(model)
        assert trainable + frozen == total
        assert frozen == sum(tv_features_counts[: MOBILENET_BLOCKS - k])
        assert trainable == head + sum(tv_features_counts[MOBILENET_BLOCKS - k:])
        assert all(p.requires_grad for p in model.body.parameters())
        assert not any(p.requires_grad for p in model.frozen.parameters())
        frozen_seen.append(frozen)
        if k == 0:
            assert trainable == head and model.has_frozen_params
        if k == 19:
            assert frozen == 0 and not model.has_frozen_params
            assert len(model.frozen) == 0 and isinstance(model.body[0][0], models.Normalize)
    assert frozen_seen == sorted(frozen_seen, reverse=True) and len(set(frozen_seen)) == 4


def test_custom_cnn_param_count_by_hand() -> None:
    model = build_model("custom_cnn", conv_blocks=2, base_width=4, head_sizes=(8,), dropout=0.1)
    conv1 = 3 * 4 * 3 * 3 + 4
    conv2 = 4 * 8 * 3 * 3 + 8
    head = (8 * 16) * 8 + 8 + 8 * 1 + 1  # 8 channels pooled to 4x4
    assert count_params(model) == (conv1 + conv2 + head, 0)
    assert count_params(build_model("custom_cnn", conv_blocks=1, base_width=2, head_sizes=())) == (
        3 * 2 * 9 + 2 + 2 * 16 + 1, 0)
    assert model(torch.rand(3, 3, 40, 40)).shape == (3,)


def test_frozen_batchnorm_stats_do_not_move() -> None:
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", weights="none", unfrozen_blocks=2, head_sizes=HEAD)
    assert not model.frozen.training  # even before any train()/eval() call: the feature cache encodes then
    before = {k: v.clone() for k, v in model.frozen.state_dict().items()}
    model.encode(torch.rand(4, 3, 32, 32))
    assert all(torch.equal(before[k], v) for k, v in model.frozen.state_dict().items())
    model.train()
    assert model.training and not model.frozen.training and model.body.training

    def bn_stats(module: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in module.state_dict().items() if "running" in k or "num_batches" in k}

    frozen_before, body_before = bn_stats(model.frozen), bn_stats(model.body)
    assert frozen_before and body_before
    model(torch.rand(4, 3, 32, 32)).sum().backward()
    frozen_after, body_after = bn_stats(model.frozen), bn_stats(model.body)
    assert all(torch.equal(frozen_before[k], frozen_after[k]) for k in frozen_before)
    assert any(not torch.equal(body_before[k], body_after[k]) for k in body_before)  # the test can fail
    assert all(p.grad is None for p in model.frozen.parameters())
    assert all(p.grad is not None for p in model.head.parameters())


# --------------------------------------------------------------------------- weights files
@pytest.fixture
def saved_weights(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(1234)
    net = tv_mobilenet_v2(weights=None)
    for m in net.modules():  # make the BN buffers differ from a fresh init too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
    path = tmp_path / "mine.pth"
    torch.save(net.state_dict(), path)
    return path, net


@pytest.mark.parametrize("unfrozen", [0, 3])
def test_weights_from_local_file(saved_weights, unfrozen: int) -> None:
    path, net = saved_weights
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", weights=str(path), unfrozen_blocks=unfrozen, head_sizes=HEAD)
    fresh = build_model("mobilenet_v2", weights="none", unfrozen_blocks=unfrozen, head_sizes=HEAD)
    blocks = features_of(model)
    assert len(blocks) == MOBILENET_BLOCKS
    for mine, ref in zip(blocks, net.features, strict=True):
        a, b = mine.state_dict(), ref.state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    assert model.weights_source.startswith("file mine.pth sha256:")
    assert file_sha256(path) in model.weights_source


def test_weights_wrapped_in_model_key(saved_weights, tmp_path: Path) -> None:
    path, net = saved_weights
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"model": net.state_dict()}, wrapped)
    model = build_model("mobilenet_v2", weights=str(wrapped), unfrozen_blocks=0, head_sizes=HEAD)
    assert torch.equal(features_of(model)[0][0].weight, net.features[0][0].weight)


class Payload:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickled_object_in_torch_file_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pth"
    torch.save({"features.0.0.weight": torch.zeros(1), "x": Payload(marker)}, p)
    with pytest.raises(UserError, match=r"refused to load .*evil\.pth"):
        build_model("mobilenet_v2", weights=str(p))
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_plain_pickle_payload_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pth"
    p.write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(UserError, match="refused to load"):
        build_model("mobilenet_v2", weights=str(p))
    assert not marker.exists()


def test_bad_weights_files(saved_weights, tmp_path: Path) -> None:
    _, net = saved_weights
    cases = {}
    cases["wrong_keys"] = {"conv.weight": torch.zeros(3), "fc.bias": torch.zeros(2)}
    partial = dict(net.state_dict())
    del partial["features.3.conv.0.0.weight"]
    cases["missing_one"] = partial
    shape = dict(net.state_dict())
    shape["features.0.0.weight"] = torch.zeros(8, 3, 3, 3)
    cases["wrong_shape"] = shape
    cases["not_a_dict"] = torch.zeros(3)
    cases["dict_of_ints"] = {"features.0.0.weight": 3}
    for name, obj in cases.items():
        p = tmp_path / f"{name}.pth"
        torch.save(obj, p)
        with pytest.raises(UserError, match=re.escape(name)):
            build_model("mobilenet_v2", weights=str(p))
    (tmp_path / "garbage.pth").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(UserError, match="garbage.pth"):
        build_model("mobilenet_v2", weights=str(tmp_path / "garbage.pth"))
    with pytest.raises(UserError, match="weights file not found"):
        build_model("mobilenet_v2", weights=str(tmp_path / "nope.pth"))


def imagenet_cache_path() -> Path:
    from torchvision.models import MobileNet_V2_Weights

    return Path(torch.hub.get_dir()) / "checkpoints" / Path(MobileNet_V2_Weights.IMAGENET1K_V1.url).name


def test_imagenet_offline_is_refused_never_random(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("TUNE_OFFLINE", "1")
    path = imagenet_cache_path()
    assert str(path).startswith(str(tmp_path)) and not path.exists()
    with pytest.raises(WeightsUnavailable, match=re.escape(str(path))):
        build_model("mobilenet_v2", weights="imagenet", head_sizes=HEAD)
    assert build_model("mobilenet_v2", weights="none").weights_source.startswith("none (random init, as")


def test_imagenet_from_torch_cache(saved_weights, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, net = saved_weights
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path = imagenet_cache_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(src.read_bytes())
    model = build_model("mobilenet_v2", weights="imagenet", head_sizes=HEAD)
    assert model.weights_source.startswith("hub: torchvision IMAGENET1K_V1")
    assert torch.equal(features_of(model)[5].conv[0][0].weight, net.features[5].conv[0][0].weight)
