"""fit(): early stopping, determinism, divergence, cached vs live inputs, resume, and the run folder."""

from __future__ import annotations

import copy
import csv
import importlib.metadata
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_dataset

import tune.training.cache as cache
import tune.training.loop as train_mod
import tune.training.store as store
from tune.data.images import ImageSet, load_split
from tune.models.detector import count_params
from tune.training.config import TrainConfig
from tune.training.loop import fit, make_model
from tune.training.records import HISTORY_FIELDS, save_run

METRICS = ("train_loss", "val_loss", "val_auc")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def splits(tmp_path_factory: pytest.TempPathFactory) -> tuple[ImageSet, ImageSet]:
    root = make_dataset(tmp_path_factory.mktemp("train") / "data", n=8, size=32, splits=("train", "valid"))
    return load_split(root, "train", 32), load_split(root, "valid", 32)


CNN = TrainConfig.of(arch="custom_cnn", image_size=32, batch_size=8, epochs=2, lr=3e-3, conv_blocks=1, base_width=4,
                  head_sizes=(8,), dropout=0.2)
MOBILE = TrainConfig.of(**{k: v for k, v in CNN.to_dict().items() if k not in ("arch", "conv_blocks", "base_width")},
                        **{"arch": "mobilenet_v2", "unfrozen_blocks": 1, "weights": "none"})


def run(cfg: TrainConfig, splits, **kw) -> train_mod.FitResult:
    return fit(cfg, *splits, log=None, **kw)


def numbers(result: train_mod.FitResult) -> list[tuple[float, ...]]:
    return [tuple(row[k] for k in METRICS) for row in result.history]


def weights_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Recorder:
    """A report hook that keeps a copy of the live weights after every epoch."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def __call__(self, row: dict, state) -> None:
        self.rows.append(row)
        self.weights[row["epoch"]] = copy.deepcopy(state()["trained"])


def scripted_evaluate(monkeypatch: pytest.MonkeyPatch, losses: list[float]) -> list[np.ndarray]:
    """Make evaluate() return the scripted validation losses (the probabilities stay real)."""
    real, it, probs_seen = train_mod.evaluate, iter(losses), []

    def fake(model, batches, y):
        _, probs = real(model, batches, y)
        probs_seen.append(probs)
        return next(it), probs

    monkeypatch.setattr(train_mod, "evaluate", fake)
    return probs_seen


def test_early_stopping_restores_best_epoch(splits, monkeypatch: pytest.MonkeyPatch) -> None:
    probs = scripted_evaluate(monkeypatch, [0.9, 0.8, 0.85, 0.86, 0.87, 0.5])
    rec = Recorder()
    result = run(CNN.replace(epochs=10, patience=3), splits, report=rec)
    assert result.ended == "early_stopped"
    assert len(result.history) == 5 and len(rec.rows) == 5
    assert result.best_epoch == 2 and result.best["val_loss"] == 0.8
    assert [r["best_epoch"] for r in result.history] == [1, 2, 2, 2, 2]
    assert [r["ended"] for r in result.history] == ["", "", "", "", "early_stopped"]
    assert weights_equal(result.model.state_dict(), rec.weights[2])
    assert not weights_equal(rec.weights[2], rec.weights[5])
    assert np.array_equal(result.val_probs, probs[1])


def test_completed_when_always_improving(splits, monkeypatch: pytest.MonkeyPatch) -> None:
    scripted_evaluate(monkeypatch, [0.9, 0.8, 0.7])
    result = run(CNN.replace(epochs=3, patience=1), splits)
    assert result.ended == "completed" and result.best_epoch == 3
    assert [r["ended"] for r in result.history] == ["", "", "completed"]


def test_patience_counts_epochs_without_improvement(splits, monkeypatch: pytest.MonkeyPatch) -> None:
    scripted_evaluate(monkeypatch, [0.5, 0.6, 0.4, 0.4, 0.7, 0.3])  # equal is not an improvement
    result = run(CNN.replace(epochs=6, patience=2), splits)
    assert result.ended == "early_stopped" and len(result.history) == 5 and result.best_epoch == 3


@pytest.mark.parametrize("cfg", [CNN, MOBILE], ids=["custom_cnn", "mobilenet_v2"])
def test_same_seed_same_numbers(splits, cfg: TrainConfig) -> None:
    a, b = run(cfg, splits), run(cfg, splits)
    assert numbers(a) == numbers(b)
    assert all(math.isfinite(v) for row in numbers(a) for v in row)
    assert weights_equal(a.model.state_dict(), b.model.state_dict())
    other = run(cfg.replace(seed=1), splits)
    assert numbers(other) != numbers(a)
    assert all(x != y for x, y in zip(numbers(other)[0][:2], numbers(a)[0][:2]))


def test_nan_loss_ends_as_diverged(splits) -> None:
    rec = Recorder()

    def poison(row: dict, state) -> None:
        rec(row, state)
        if row["epoch"] == 1:
            state()["trained"]["head.0.weight"].fill_(math.nan)  # live weights: epoch 2 goes NaN

    result = run(CNN.replace(epochs=5), splits, report=poison)
    assert result.ended == "diverged"
    assert len(result.history) == 2 and result.best_epoch == 1
    assert math.isnan(result.history[1]["train_loss"]) and math.isnan(result.history[1]["val_auc"])
    assert result.history[1]["ended"] == "diverged"
    assert weights_equal(result.model.state_dict(), rec.weights[1])
    assert all(torch.isfinite(t).all() for t in result.model.state_dict().values() if t.is_floating_point())


def test_diverged_on_first_epoch(splits, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train_mod, "train_one_epoch", lambda *a, **k: math.nan)
    result = run(CNN.replace(epochs=5), splits)
    assert result.ended == "diverged" and len(result.history) == 1 and result.best_epoch == 0
    init = make_model(CNN)
    assert weights_equal(result.model.state_dict(), init.state_dict())


@pytest.mark.parametrize(("unfrozen", "augment"), [(0, "none"), (2, "none"), (2, "all")])
def test_cached_and_live_training_agree(splits, tmp_path: Path, unfrozen: int, augment: str, backbone_passes) -> None:
    # One batch per epoch (16 images): the frozen prefix then sees the same batch shapes on both paths, so
    # the numbers agree to float precision. (With other batch sizes the backbone's kernels differ at ~1e-6
    # relative, which training-mode BatchNorm on 1x1 maps and Adam amplify; test_cached_inputs_match_live
    # checks the per-batch indexing at those sizes.) With augmentation, live training computes the very
    # pixels of the cached views: epoch 3 trains on view 0 again (aug_views 2).
    cfg = MOBILE.replace(unfrozen_blocks=unfrozen, batch_size=16, epochs=3, lr=1e-2, augment=augment, aug_views=2)
    backbone_passes.clear()
    cached = run(cfg, splits, cache_dir=tmp_path / "features")
    views = 2 if augment != "none" else 1
    assert len(backbone_passes.full) == 1 + 2 * views  # valid, then each view plain and flipped
    live = run(cfg.replace(use_cache=False), splits, cache_dir=tmp_path / "features")
    assert cached.cache_mode.startswith("train and valid cached") and live.cache_mode == "off"
    assert len(cached.history) == len(live.history) == 3
    for a, b in zip(cached.history, live.history, strict=True):
        for k in (*METRICS, "val_accuracy"):
            assert a[k] == pytest.approx(b[k], abs=1e-5), k
    np.testing.assert_allclose(cached.val_probs, live.val_probs, atol=1e-5)
    assert numbers(cached)[0] != numbers(cached)[-1]  # it did train
    again = run(cfg, splits, cache_dir=tmp_path / "features")
    assert len(backbone_passes.full) == 1 + 2 * views  # the features came from disk
    assert numbers(again) == numbers(cached)
    if augment != "none":  # the augmented views are not the plain images
        plain = run(cfg.replace(augment="none"), splits, cache_dir=tmp_path / "features")
        assert numbers(plain)[0][0] != numbers(cached)[0][0]


@pytest.mark.parametrize(("unfrozen", "augment"), [(0, "none"), (2, "none"), (2, "crop,jitter,blur,jpeg")])
def test_cached_inputs_match_live(splits, unfrozen: int, augment: str) -> None:
    cfg = MOBILE.replace(unfrozen_blocks=unfrozen, batch_size=5, augment=augment, aug_views=3)
    model = make_model(cfg)
    cached = cache.Inputs(model, cfg, *splits, cache_dir=None)
    live = cache.Inputs(model, cfg.replace(use_cache=False), *splits, cache_dir=None)
    gen = torch.Generator().manual_seed(3)
    for epoch in (1, 2, 4):  # epoch 4 is view 0 again
        cached.start_epoch(epoch)
        live.start_epoch(epoch)
        assert cached.view == live.view == ((epoch - 1) % 3 if augment != "none" else 0)
        idx = np.sort(torch.randperm(16, generator=gen)[:5].numpy())
        flip = train_mod.draw_flips(5, True, gen)
        a, b = cached.train_batch(idx, flip), live.train_batch(idx, flip)
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))
        other = live.train_batch(idx, torch.zeros(5, dtype=torch.bool))
        if flip.any():  # the test can tell flipped from unflipped features
            assert not torch.allclose(a, other, rtol=1e-3, atol=1e-3 * float(b.abs().max()))
    za, zb = next(cached.valid_batches(7)), next(live.valid_batches(7))
    torch.testing.assert_close(za, zb, rtol=1e-4, atol=1e-4 * float(zb.abs().max()))


def test_cache_modes(splits, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    aug = MOBILE.replace(unfrozen_blocks=0, augment="blur,jpeg", epochs=1)
    assert run(aug.replace(aug_views=2), splits).cache_mode == "train and valid cached (2 augmented views)"
    fresh = run(aug.replace(aug_views=0), splits).cache_mode
    assert fresh == "valid cached; train live (a fresh augmented view every epoch)"
    assert run(CNN.replace(epochs=1), splits).cache_mode == "no frozen layers"
    # 1280 floats an image: valid (16 images, 82 kB) fits 100 kB, the view's two orientations (164 kB) do not
    monkeypatch.setenv(store.BUDGET_ENV, str(100e3 / 1e9))
    mode = run(aug, splits, cache_dir=tmp_path / "f").cache_mode
    assert mode.startswith("valid cached; train live (its views would take 164 kB > the cache budget"), mode


def nbytes(obj: object) -> int:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return len(buf.getvalue())


def test_resume_continues_identically(splits) -> None:
    """Through a saved file, as a trial's checkpoint: epoch 1 is the kept epoch, so the checkpoint holds its
    weights once (trained and best_trained are the same tensors), and the run resumed from it is the same run."""
    cfg = CNN.replace(epochs=3, patience=5)
    full = run(cfg, splits)
    saved = {}

    def keep(row: dict, state) -> None:
        if row["epoch"] == 1:
            st = state()
            assert row["best_epoch"] == 1
            buf = io.BytesIO()
            torch.save(st, buf)
            assert buf.tell() < nbytes(st["trained"]) + nbytes(st["optimizer"]) + 0.5 * nbytes(st["trained"])
            buf.seek(0)
            saved.update(torch.load(buf, weights_only=True))

    first = run(cfg, splits, report=keep, stop_after=1)
    assert len(first.history) == 1
    resumed = run(cfg, splits, resume=saved)
    assert numbers(resumed) == numbers(full)
    assert weights_equal(resumed.model.state_dict(), full.model.state_dict())


def test_save_run(splits, tmp_path: Path) -> None:
    cfg = CNN.replace(epochs=3)
    result = run(cfg, splits)
    assert (result.trainable_params, result.frozen_params) == count_params(result.model)
    data = {"root": "somewhere", "train_fingerprint": splits[0].fingerprint,
            "valid_fingerprint": splits[1].fingerprint}
    out = tmp_path / "run"
    record = save_run(out, cfg, result, data)

    sd = torch.load(out / "best.pth", weights_only=True)
    model = make_model(cfg.replace(seed=7))
    model.load_state_dict(sd)
    model.eval()
    result.model.eval()
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(model(x), result.model(x))

    with open(out / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(out / "history.csv") as f:
        assert f.readline().strip() == ",".join(HISTORY_FIELDS)
    assert len(rows) == len(result.history) == 3
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[0]["val_loss"]) == pytest.approx(result.history[0]["val_loss"])

    saved = json.loads((out / "record.json").read_text())
    assert saved == json.loads(json.dumps(record.to_plain(), default=str))
    assert TrainConfig.from_dict(saved["config"]) == cfg
    assert saved["seed"] == cfg.seed
    assert saved["data"]["train_fingerprint"] == splits[0].fingerprint
    assert saved["data"]["valid_fingerprint"] == splits[1].fingerprint
    assert saved["weights_source"] == "random init"
    assert saved["versions"]["torch"] == importlib.metadata.version("torch")
    assert {"python", "torch", "torchvision", "numpy"} <= set(saved["versions"])
    assert saved["epochs_run"] == 3 and saved["best_epoch"] == result.best_epoch
    assert saved["ended"] == result.ended


# --------------------------------------------------------------------------- one rule for the kept epoch
def scripted_metric(monkeypatch: pytest.MonkeyPatch, name: str, values: list[float]) -> None:
    """Make the per-epoch validation metric `name` take the scripted values (the rest stays real)."""
    real, it = train_mod.binary_metrics, iter(values)

    def fake(y, p, *a, **k):
        return {**real(y, p, *a, **k), name: next(it)}

    monkeypatch.setattr(train_mod, "binary_metrics", fake)


def test_monitor_picks_the_kept_epoch_and_stops_early(splits, monkeypatch: pytest.MonkeyPatch) -> None:
    """monitor val_auc: the epoch with the best AUC is kept and patience counts epochs without a better AUC,
    whatever val_loss does (here it is scripted to fall every epoch, which the val_loss rule would follow)."""
    scripted_metric(monkeypatch, "auc", [0.6, 0.8, 0.7, 0.8, 0.9])
    probs = scripted_evaluate(monkeypatch, [0.9, 0.8, 0.7, 0.6, 0.5])
    rec = Recorder()
    result = run(CNN.replace(epochs=10, patience=2, monitor="val_auc"), splits, report=rec)
    assert result.monitor == "val_auc" and result.ended == "early_stopped"
    assert len(result.history) == 4  # epochs 3 and 4 are not better than 0.8 (equal is not better)
    assert result.best_epoch == 2 and result.best["val_auc"] == 0.8
    assert [r["best_epoch"] for r in result.history] == [1, 2, 2, 2]
    assert weights_equal(result.model.state_dict(), rec.weights[2])
    assert np.array_equal(result.val_probs, probs[1])


def test_monitor_a_metric_that_is_better_low(splits, monkeypatch: pytest.MonkeyPatch) -> None:
    scripted_metric(monkeypatch, "eer", [0.4, 0.3, 0.35, 0.2])
    result = run(CNN.replace(epochs=4, patience=5, monitor="val_eer"), splits)
    assert result.best_epoch == 4 and result.ended == "completed"


def test_the_notebook_rule_stays_the_default(splits, monkeypatch: pytest.MonkeyPatch) -> None:
    scripted_metric(monkeypatch, "auc", [0.9, 0.5, 0.4])
    scripted_evaluate(monkeypatch, [0.9, 0.8, 0.7])
    result = run(CNN.replace(epochs=3), splits)
    assert CNN.monitor == "val_loss" and result.best_epoch == 3


# --------------------------------------------------------------------------- the fine-tuning recipe's knobs
def test_head_and_backbone_get_their_own_learning_rates(splits) -> None:
    cfg = MOBILE.replace(unfrozen_blocks=2, lr=1e-2, backbone_lr_mult=0.1)
    model = make_model(cfg)
    groups = {g["name"]: g for g in train_mod.param_groups(model, cfg)}
    assert groups["head"]["lr"] == 1e-2 and groups["body"]["lr"] == pytest.approx(1e-3)
    assert {id(p) for p in groups["head"]["params"]} == {id(p) for p in model.head.parameters()}
    assert {id(p) for p in groups["body"]["params"]} == {id(p) for p in model.body.parameters() if p.requires_grad}
    # one step of Adam moves each weight by about its group's lr: the body's steps are 10x smaller
    steps = {}
    for mult in (1.0, 0.1):
        c = cfg.replace(backbone_lr_mult=mult, epochs=1, batch_size=32, dropout=0.0)
        before = make_model(c).state_dict()
        after = run(c, splits).model.state_dict()
        steps[mult] = {part: max(float((after[k] - before[k]).abs().max()) for k in before
                                 if k.startswith(part) and before[k].is_floating_point() and "running" not in k)
                       for part in ("head.", "body.")}
    assert steps[0.1]["head."] == pytest.approx(steps[1.0]["head."], rel=0.05)
    assert steps[0.1]["body."] == pytest.approx(0.1 * steps[1.0]["body."], rel=0.05)
    head_only = train_mod.param_groups(make_model(MOBILE.replace(unfrozen_blocks=0)), cfg)
    assert [g["name"] for g in head_only] == ["head"]  # nothing trainable before the head


def test_adamw_decouples_weight_decay(splits) -> None:
    a = run(CNN.replace(epochs=1, weight_decay=0.1), splits)
    b = run(CNN.replace(epochs=1, weight_decay=0.1, optimizer="adamw"), splits)
    assert numbers(a) != numbers(b)
    assert isinstance(train_mod.OPTIMIZERS["adamw"](train_mod.param_groups(make_model(CNN), CNN)),
                      torch.optim.AdamW)
    from tune.training.config import options
    declared = next(f for f in options() if f.name == "optimizer").metadata["choices"]
    assert tuple(train_mod.OPTIMIZERS) == declared  # every declared optimizer can be built


def test_schedule_warmup_then_cosine_over_the_max_epochs(splits) -> None:
    cfg = CNN.replace(epochs=4, schedule="cosine", warmup_epochs=1, lr=1e-2)
    factors = [train_mod.lr_factor(cfg, step, 10) for step in range(40)]
    assert factors[:10] == pytest.approx([(k + 1) / 10 for k in range(10)])  # linear warm-up
    assert factors[10] == pytest.approx(1.0) and factors[-1] < 0.01
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))  # cosine only goes down
    assert train_mod.lr_factor(CNN, 7, 10) == 1.0  # constant, no warm-up: the notebook's
    result = run(cfg.replace(patience=10), splits)  # 16 images, batch 8: 2 steps per epoch
    lrs = [r["lr"] for r in result.history]
    assert lrs[0] == pytest.approx(1e-2) and lrs == sorted(lrs, reverse=True) and lrs[-1] < 1e-3


def test_label_smoothing_softens_training_targets_only(splits, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    real = torch.nn.functional.binary_cross_entropy_with_logits

    def spy(logits, target, *a, **k):
        seen.append(target.detach().clone())
        return real(logits, target, *a, **k)

    monkeypatch.setattr(train_mod.nn.functional, "binary_cross_entropy_with_logits", spy)
    run(CNN.replace(epochs=1, label_smoothing=0.2), splits)
    train_targets = torch.cat(seen[:-1])  # the last call is evaluate's, on valid
    assert train_targets.unique().tolist() == pytest.approx([0.1, 0.9])
    assert seen[-1].unique().tolist() == [0.0, 1.0]  # validation loss keeps the true labels


def test_head_without_hidden_layers_has_dropout_before_its_output() -> None:
    from tune.models.detector import DropoutLinear

    m = make_model(MOBILE.replace(head_sizes=(), dropout=0.2))
    out = m.head[-1]
    assert isinstance(out, DropoutLinear) and out.p == 0.2 and list(m.head.state_dict()) == ["0.weight", "0.bias"]
    x = torch.ones(64, out.in_features)
    m.head.train()
    assert (m.head(x) != m.head(x)).any()  # dropout is on in training
    m.head.eval()
    assert torch.equal(m.head(x), torch.nn.functional.linear(x, out.weight, out.bias))
    assert type(make_model(MOBILE.replace(head_sizes=(), dropout=0.0)).head[-1]) is torch.nn.Linear
