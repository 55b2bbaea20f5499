"""Searchable inputs (tune/models/inputs.py) and CNNDetection's Blur+JPEG preset: the transforms match their
definitions on a hand-computed 4x4 image, they are part of the model (cache keys change with them), and a
bad choice in a space is one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tune.core import UserError
from tune.data.augment import augment, parse_augment
from tune.models.inputs import InputTransform, channels, dwt, highpass, npr, parse_input
from tune.search.space import parse_space
from tune.training.cache import frozen_key, prefix_keys
from tune.training.config import TrainConfig
from tune.training.loop import make_model

# pi's digits, so that no two 2x2 blocks are alike
X = torch.tensor([[3, 1, 4, 1], [5, 9, 2, 6], [5, 3, 5, 8], [9, 7, 9, 3]], dtype=torch.float32)


def rgb_of(m: torch.Tensor) -> torch.Tensor:
    """(4, 4) → (1, 3, 4, 4): R the matrix, G twice it, B its negative (the transforms are per channel)."""
    return torch.stack([m, 2 * m, -m])[None]


def test_npr_is_each_pixel_minus_its_blocks_top_left_pixel() -> None:
    # blocks' top-left pixels: 3 | 4 over 5 | 5
    want = torch.tensor([[0, -2, 0, -3], [2, 6, -2, 2], [0, -2, 0, 3], [4, 2, 4, -2]], dtype=torch.float32)
    out = npr(rgb_of(X))
    assert torch.equal(out, rgb_of(want))


def test_npr_of_an_odd_side_keeps_its_last_row_and_column_as_their_own_blocks() -> None:
    x = torch.arange(25, dtype=torch.float32).view(1, 1, 5, 5)
    out = npr(x)
    assert out.shape == x.shape and torch.equal(out[0, 0, 4, ::2], torch.zeros(3)) and out[0, 0, 1, 1] == 6


def test_highpass_is_the_srm_kernel_reflect_padded() -> None:
    out = highpass(rgb_of(X))[0, 0]
    # centre (1, 1): rows 0-2, cols 0-2 [[3,1,4],[5,9,2],[5,3,5]] against [[-1,2,-1],[2,-4,2],[-1,2,-1]] / 4
    assert out[1, 1] == pytest.approx((-3 + 2 - 4 + 10 - 36 + 4 - 5 + 6 - 5) / 4)  # -7.75
    # corner (0, 0), reflected: rows (1, 0, 1), cols (1, 0, 1) → [[9,5,9],[1,3,1],[9,5,9]]
    assert out[0, 0] == pytest.approx((-9 + 10 - 9 + 2 - 12 + 2 - 9 + 10 - 9) / 4)  # -6
    ramp = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4).expand(1, 3, 4, 4)
    assert torch.equal(highpass(ramp), torch.zeros(1, 3, 4, 4))  # a linear ramp has no high-pass residual


def test_dwt_is_the_haar_high_bands_repeated_over_their_blocks() -> None:
    out = dwt(rgb_of(X))
    assert out.shape == (1, 9, 4, 4)
    # blocks [[a, b], [c, d]]: (3 1 5 9), (4 1 2 6), (5 3 9 7), (5 8 9 3)
    lh = [[-5, -1.5], [-4, 0.5]]  # (a+b-c-d)/2
    hl = [[-1, -0.5], [2, 1.5]]  # (a-b+c-d)/2
    hh = [[3, 3.5], [0, -4.5]]  # (a-b-c+d)/2
    for band, want in enumerate((lh, hl, hh)):
        full = torch.tensor(want).repeat_interleave(2, 0).repeat_interleave(2, 1)
        assert torch.equal(out[0, 3 * band], full)  # R
        assert torch.equal(out[0, 3 * band + 1], 2 * full)  # G
    ones = torch.ones(1, 3, 4, 4)
    assert torch.equal(dwt(ones), torch.zeros(1, 9, 4, 4))  # flat: no high band


def test_a_stack_concatenates_its_channels_in_order() -> None:
    t = InputTransform(parse_input("rgb+npr"))
    x = rgb_of(X)
    assert torch.equal(t(x), torch.cat([x, npr(x)], 1)) and channels(("rgb", "npr", "dwt")) == 15
    assert "input=rgb+npr" in repr(t)


@pytest.mark.parametrize("bad, says", [("fft", "unknown input 'fft'"), ("rgb+rgb", "a repeated input"),
                                       ("rgb+", "unknown input ''")])
def test_a_bad_input_is_one_line(bad: str, says: str) -> None:
    with pytest.raises(UserError, match=says):
        parse_input(bad)


@pytest.mark.parametrize("arch, hp", [("custom_cnn", {"conv_blocks": 2, "base_width": 8}),
                                      ("mobilenet_v2", {"weights": "none", "unfrozen_blocks": 2}),
                                      ("efficientnet_lite0", {"weights": "none", "unfrozen_blocks": 3})])
@pytest.mark.parametrize("inp", ["npr", "rgb+dwt"])
def test_the_transform_is_the_models_first_module(arch: str, hp: dict, inp: str) -> None:
    rgb = make_model(TrainConfig.of(arch=arch, image_size=32, **hp)).eval()
    other = make_model(TrainConfig.of(arch=arch, image_size=32, input=inp, **hp)).eval()
    first = (other.frozen if len(other.frozen) else other.body)[0]
    assert isinstance(first[0], InputTransform)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():  # the first unit sees the transform's channels (random-init outputs collapse later)
        assert other(x).shape == (2,) and not torch.allclose(first(x), (rgb.frozen or rgb.body)[0](x))
    assert not any(p.requires_grad for p in other.frozen.parameters())  # the widened stem stays frozen there


def test_the_cache_key_changes_with_the_input_transform() -> None:
    keys = {}
    for inp in ("rgb", "npr", "highpass", "dwt", "rgb+npr", "npr+rgb"):
        cfg = TrainConfig.of(arch="mobilenet_v2", weights="none", image_size=32, unfrozen_blocks=2, input=inp)
        keys[inp] = frozen_key(make_model(cfg))
    assert len(set(keys.values())) == len(keys)
    # the same input, the same key (rebuilt from the seed): trials that share it share the stored features
    again = make_model(TrainConfig.of(arch="mobilenet_v2", weights="none", image_size=32, unfrozen_blocks=2,
                                      input="npr"))
    assert frozen_key(again) == keys["npr"] and prefix_keys(again)[0] == prefix_keys(again)[0]


@pytest.mark.parametrize("spec, key, says", [
    ({"input": "fft"}, "architectures.custom_cnn", "unknown input 'fft'"),
    ({"input": {"type": "categorical", "choices": ["rgb", "rgb+wavelet"]}}, "architectures.custom_cnn.input",
     "unknown input 'wavelet'"),
    ({"resize": "nearest"}, "architectures.custom_cnn", "resize must be one of bilinear, crop"),
    ({"resize": {"type": "categorical", "choices": ["crop", "bicubic"]}}, "architectures.custom_cnn.resize",
     "resize must be one of bilinear, crop (got 'bicubic')"),
    ({"augment": {"type": "categorical", "choices": ["cnndetection", "cnndetection,jpeg"]}},
     "architectures.custom_cnn.augment", "cnndetection is blur and JPEG already"),
])
def test_a_bad_input_or_resize_in_a_space_is_one_line(spec: dict, key: str, says: str) -> None:
    with pytest.raises(UserError) as e:
        parse_space({"architectures": {"custom_cnn": spec}}, "space.yaml")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"space.yaml: key '{key}'") and says in msg


def test_inputs_and_the_preset_are_searchable() -> None:
    space = parse_space({"architectures": {"custom_cnn": {
        "input": {"type": "categorical", "choices": ["rgb", "npr", "highpass", "dwt", "rgb+npr"]},
        "resize": {"type": "categorical", "choices": ["bilinear", "crop"]},
        "augment": {"type": "categorical", "choices": ["none", "cnndetection"]},
        "aug_strength": {"type": "categorical", "choices": [0.2, 0.6, 1.0]}}}})
    assert {p.name for p in space.architectures["custom_cnn"].values()} == {"input", "resize", "augment",
                                                                            "aug_strength"}


def test_cnndetection_is_blur_then_jpeg_each_with_probability_half_the_strength() -> None:
    assert parse_augment("cnndetection") == ("cnndetection",) and parse_augment("all") == ("crop", "jitter", "blur",
                                                                                          "jpeg")
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (3, 32, 32), dtype=np.uint8)
    from tune.data.augment import draws

    for s in (1.0, 0.2):
        changed = untouched = 0
        for i in range(200):
            out = augment(img, seed=(0, i), view=0, ops=("cnndetection",), strength=s)
            u = draws((0, i), 0)
            if u[7] >= s / 2 and u[9] >= s / 2:
                assert np.array_equal(out, img)  # neither drawn: the image as it was
                untouched += 1
            elif u[9] < s / 2 or u[8] > 0.1:  # JPEG, or a blur of sigma > 0.3, always changes noise
                assert not np.array_equal(out, img)
                changed += 1
            assert np.array_equal(out, augment(img, seed=(0, i), view=0, ops=("cnndetection",), strength=s))
        p = s / 2
        assert abs(untouched / 200 - (1 - p) ** 2) < 0.12 and changed > 0
