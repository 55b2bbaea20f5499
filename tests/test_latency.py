"""Serving costs per trial (tune/training/latency.py): measured once, on the kept weights; a bigger head is slower."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_dataset

from tune.data.images import ImageSet, load_split
from tune.metrics.costs import COSTS, MEASURE_S, LatencySettings
from tune.models.registry import build_model
from tune.training.config import TrainConfig
from tune.training.latency import measure
from tune.training.loop import fit

pytestmark = pytest.mark.usefixtures("one_thread")
CNN = TrainConfig.of(arch="custom_cnn", image_size=32, batch_size=8, epochs=3, lr=3e-3, conv_blocks=1, base_width=4,
                     head_sizes=(8,), dropout=0.2, monitor="val_loss", patience=5)


@pytest.fixture(scope="module")
def splits(tmp_path_factory: pytest.TempPathFactory) -> tuple[ImageSet, ImageSet]:
    root = make_dataset(tmp_path_factory.mktemp("lat") / "data", n=8, size=32, splits=("train", "valid"))
    return load_split(root, "train", 32), load_split(root, "valid", 32)


def test_measured_once_on_the_kept_weights(splits) -> None:
    seen: list[tuple[int, dict[str, torch.Tensor]]] = []
    live: dict[int, dict[str, torch.Tensor]] = {}

    def hook(model: torch.nn.Module) -> dict:
        seen.append((len(live) + 1, copy.deepcopy(model.state_dict())))
        return measure(model, 32, LatencySettings(batch=4, repeats=3))

    def report(row: dict, state) -> None:
        live[row["epoch"]] = copy.deepcopy(state()["best_trained"])  # the weights the trial keeps

    result = fit(CNN, *splits, log=None, measure=hook, report=report)
    assert len(seen) == 1  # once per trial
    epoch, weights = seen[0]
    assert result.history[epoch - 1]["best_epoch"] == epoch  # called when that epoch became the kept one
    assert live[epoch] and all(torch.equal(weights[k], v) for k, v in live[epoch].items())
    for row in result.history[epoch - 1:]:  # that row and every later one carry the costs
        assert {c for c in COSTS if not COSTS[c].needs} <= set(row) and row[MEASURE_S] > 0
        assert row["latency_ms"] == result.history[epoch - 1]["latency_ms"] > 0


def test_a_bigger_head_measures_slower_and_larger() -> None:
    torch.manual_seed(0)
    hp = {"conv_blocks": 1, "base_width": 4, "dropout": 0.0}
    small = build_model("custom_cnn", head_sizes=(8,), **hp)
    big = build_model("custom_cnn", head_sizes=(2048, 2048), **hp)
    serving = LatencySettings(batch=8, repeats=9)
    a, b = measure(small, 32, serving), measure(big, 32, serving)
    assert b["params"] > a["params"] + 4_000_000
    assert b["latency_ms"] > 2 * a["latency_ms"] and b["latency_batch_ms"] > a["latency_batch_ms"]
    assert small.training  # measure restores the model's mode
    assert torch.get_num_threads() == 1  # and the thread count


def test_onnx_size_when_asked() -> None:
    model = build_model("custom_cnn", head_sizes=(64,), conv_blocks=1, base_width=4, dropout=0.0)
    out = measure(model, 32, LatencySettings(batch=2, repeats=1, warmup=0, onnx=True))
    assert 0.01 < out["onnx_mb"] < 1.0 and out["params"] * 4 / 1e6 <= out["onnx_mb"] * 1.2


def test_int8_latency_when_asked_and_a_bigger_head_costs_more_there_too() -> None:
    """The static int8 model `export --quantize int8` ships, timed under ONNX Runtime in the trial."""
    hp = {"conv_blocks": 1, "base_width": 4, "dropout": 0.0}
    serving = LatencySettings(batch=4, repeats=9, int8=True)
    torch.manual_seed(0)
    small = measure(build_model("custom_cnn", head_sizes=(8,), **hp), 32, serving)
    big = measure(build_model("custom_cnn", head_sizes=(2048, 2048), **hp), 32, serving)
    assert 0 < small["latency_int8_ms"] < big["latency_int8_ms"]
    plain = LatencySettings(repeats=1)
    assert "latency_int8_ms" not in measure(build_model("custom_cnn", head_sizes=(8,), **hp), 32, plain)
    assert torch.get_num_threads() == 1


def test_settings_pickled_under_their_old_name_still_load() -> None:
    """A search started before LatencySettings had its name pickled its space (in Ray's searcher state) with the
    settings as tune.metrics.costs.Serving; `search --resume` of it unpickles them."""
    import pickle

    old = pickle.dumps(LatencySettings(batch=3), 0).replace(b"\nLatencySettings\n", b"\nServing\n")
    assert pickle.loads(old) == LatencySettings(batch=3)
