"""The space's `checkpoints`: keep_best prunes a finished trial to one slim checkpoint; old run.json files load."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_dataset
from ray.tune import Checkpoint

from tune.core import UserError
from tune.data.images import load_split
from tune.search.retention import prune
from tune.search.space import load_space, parse_space
from tune.training.checkpoint import kept_weights
from tune.training.config import TrainConfig
from tune.training.loop import fit, make_model

ROOT = Path(__file__).resolve().parent.parent
CNN = TrainConfig.of(arch="custom_cnn", image_size=32, batch_size=8, epochs=3, patience=5, lr=3e-3, conv_blocks=1,
                     base_width=4, head_sizes=(8,), threads=1)


def test_prune_keeps_the_latest_checkpoint_slimmed(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data", n=4, size=32, splits=("train", "valid"))
    splits = load_split(root, "train", 32), load_split(root, "valid", 32)
    trial = tmp_path / "custom_cnn_abc"

    def save(row: dict, state: Any) -> None:  # as run_trial's checkpoints are laid out
        (trial / f"checkpoint_{row['epoch'] - 1:06d}").mkdir(parents=True)
        torch.save(state(), trial / f"checkpoint_{row['epoch'] - 1:06d}" / "state.pt")

    result = fit(CNN, *splits, report=save, log=None)
    latest = trial / "checkpoint_000002"
    whole, size = torch.load(latest / "state.pt", weights_only=True), (latest / "state.pt").stat().st_size
    assert prune(Checkpoint.from_directory(str(latest))) == 2
    assert [p.name for p in trial.iterdir()] == [latest.name]
    slim = torch.load(latest / "state.pt", weights_only=True)
    assert slim["finished"] and not {"optimizer", "trained"} & set(slim)
    assert slim["history"] == whole["history"] and (latest / "state.pt").stat().st_size < 0.6 * size
    model = make_model(CNN)
    model.load_state_dict(kept_weights(model, slim))
    assert all(torch.equal(v, result.model.state_dict()[k]) for k, v in model.state_dict().items())
    # a second prune changes nothing; a slim checkpoint is never resumed from
    before = (latest / "state.pt").read_bytes()
    assert prune(Checkpoint.from_directory(str(latest))) == 0 and (latest / "state.pt").read_bytes() == before
    with pytest.raises(UserError, match="nothing to resume"):
        fit(CNN, *splits, resume=slim, log=None)


def test_checkpoints_option() -> None:
    from tune.search.driver import space_from_record

    space = load_space(ROOT / "search_spaces" / "demo.yaml")
    assert space.checkpoints == "keep_best"
    record = json.loads(json.dumps(asdict(space)))
    del record["checkpoints"]  # a run.json written before the option: it loads, as keep_best
    assert space_from_record(record) == space
    assert space_from_record({**record, "checkpoints": "keep_all"}).checkpoints == "keep_all"
    doc = {"checkpoints": "keep_some", "architectures": {"custom_cnn": {}}}
    with pytest.raises(UserError, match=r"^my.yaml: key 'checkpoints': expected one of \['keep_best', 'keep_all'\]"):
        parse_space(doc, "my.yaml")
