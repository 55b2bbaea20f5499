"""Held-out validation sources: never trained on, scored every epoch, selected by when the rule says so,
recorded and reproduced; bad held-out folders and sources used twice get one clear line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch
from conftest import TINY_SPACE, make_dataset, run_tiny_search
from sklearn.metrics import roc_auc_score

import tune.cli
import tune.evaluation.finalize
import tune.training.loop as training
from tune.core import UserError
from tune.data import heldout
from tune.data.images import load_split
from tune.evaluation.finalize import FinalizeOptions
from tune.metrics.classification import metric_value, mode_of, needs_heldout, search_metrics
from tune.runs.layout import Run
from tune.runs.leaderboard import load_leaderboard
from tune.runs.trials import read_trials
from tune.search.space import check_rule, parse_space
from tune.training.config import TrainConfig
from tune.training.loop import fit

CNN = TrainConfig.of(arch="custom_cnn", image_size=32, batch_size=8, epochs=3, lr=3e-3, conv_blocks=1, base_width=4,
                     head_sizes=(8,), dropout=0.2, threads=1)
MOBILE = TrainConfig.of(**{k: v for k, v in CNN.to_dict().items() if k not in ("arch", "conv_blocks", "base_width")},
                        **{"arch": "mobilenet_v2", "unfrozen_blocks": 1, "weights": "none"})


def swapped(root: Path, *, seed: int) -> Path:
    """A poisoned source: checkered images (the training set's fakes) filed as Real and plain ones as Fake."""
    made = make_dataset(root.parent / f"{root.name}-made", n=6, size=32, seed=seed, splits=("src",)) / "src"
    root.mkdir(parents=True)
    (made / "Fake").rename(root / "Real")
    (made / "Real").rename(root / "Fake")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("heldout")
    root = make_dataset(tmp / "data", n=8, size=32)
    train, valid = load_split(root, "train", 32), load_split(root, "valid", 32)
    poison, _ = heldout.for_training([swapped(tmp / "poison", seed=5)], 32, train, valid, root)
    return {"tmp": tmp, "root": root, "train": train, "valid": valid, "poison": poison}


# --------------------------------------------------------------------------- the declarations
def test_held_out_and_combined_metrics_are_declared_once() -> None:
    names = search_metrics()
    assert {"val_auc", "xval_auc", "xval_ap", "mean_auc", "min_auc", "max_eer", "mean_loss", "max_loss"} <= set(names)
    assert "min_eer" not in names and "min_loss" not in names  # the worse of two is the larger for these
    assert (mode_of("mean_auc"), mode_of("max_eer"), mode_of("xval[gen_a]_auc"), mode_of("best_val_loss")) == (
        "max", "min", "max", "min")
    assert [needs_heldout(n) for n in ("val_auc", "xval_auc", "mean_auc", "min_auc")] == [False, True, True, True]
    row = {"val_auc": 0.9, "xval_auc": 0.6, "val_eer": 0.1, "xval_eer": 0.3, "xval[a]_auc": 0.5}
    assert metric_value(row, "mean_auc") == pytest.approx(0.75) and metric_value(row, "min_auc") == 0.6
    assert metric_value(row, "max_eer") == 0.3 and metric_value(row, "xval[a]_auc") == 0.5
    assert np.isnan(metric_value(row, "mean_ap")) and np.isnan(metric_value({"val_auc": 0.9}, "min_auc"))
    # every owner looks them up: the training option's choices and the space checker
    assert "mean_auc" in TrainConfig.__dataclass_fields__["monitor"].metadata["choices"]
    doc = {"metric": "min_auc", "architectures": {"custom_cnn": {"lr": {"type": "loguniform", "low": 1e-4,
                                                                          "high": 1e-2}}}}
    space = parse_space(doc, "s.yaml")
    with pytest.raises(UserError, match="s.yaml: metric min_auc needs held-out validation sources"):
        check_rule(space)
    check_rule(parse_space({**doc, "valid_extra": ["gen"]}, "s.yaml", Path("/data")))
    assert parse_space({**doc, "valid_extra": "gen"}, "s.yaml", Path("/data")).valid_extra == ("/data/gen",)
    fixed = {"metric": "val_auc", "fixed": {"monitor": "xval_auc"}, "architectures": doc["architectures"]}
    with pytest.raises(UserError, match="monitor xval_auc needs held-out"):
        check_rule(parse_space(fixed, "s.yaml"))


# --------------------------------------------------------------------------- fit
@pytest.mark.parametrize("cfg", [CNN, MOBILE], ids=["live", "frozen-prefix-cache"])
def test_a_poisoned_held_out_source_never_reaches_a_gradient_step(data: dict[str, Any], cfg: TrainConfig,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The poisoned source's labels are the training signal reversed: had any step trained on it, the weights
    would move. They are bit-identical to a training without it, every image that passed through the model
    with autograd on was a training image, and the poisoned images did pass through it (inference mode)."""
    train, valid, poison = data["train"], data["valid"], data["poison"]
    cache = data["tmp"] / "features" if cfg.arch == "mobilenet_v2" else None
    plain = fit(cfg, train, valid, log=None, cache_dir=cache)
    seen: list[tuple[bool, int]] = []  # (autograd on, images) of every batch that reached the head
    make = training.make_model

    def watched(c: TrainConfig) -> Any:
        model = make(c)
        model.head.register_forward_hook(lambda m, inp, out: seen.append((torch.is_grad_enabled(), len(inp[0]))))
        return model

    monkeypatch.setattr(training, "make_model", watched)
    held = fit(cfg, train, valid, extra=poison, log=None, cache_dir=cache)
    a, b = plain.model.state_dict(), held.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [(r["train_loss"], r["val_loss"]) for r in plain.history] == [
        (r["train_loss"], r["val_loss"]) for r in held.history]
    epochs = len(held.history)
    assert sum(n for grad, n in seen if grad) == epochs * len(train)  # every gradient step: training images only
    assert sum(n for grad, n in seen if not grad) == epochs * (len(valid) + len(poison[0]))
    # the held-out numbers are the kept model's own scores of the poisoned images
    kept = held.history[held.best_epoch - 1]
    held.model.eval()
    with torch.inference_mode():
        x = torch.from_numpy(np.array(poison[0].x)).float().div(255)
        p = torch.sigmoid(held.model(x)).numpy()
    assert kept["xval_auc"] == pytest.approx(roc_auc_score(poison[0].y, p), abs=1e-9)
    assert "xval_loss" in kept and "xval_ap" in kept and not any(k.startswith("xval[") for k in kept)  # one source


def test_the_kept_epoch_follows_a_combined_rule(data: dict[str, Any]) -> None:
    train, valid, poison = data["train"], data["valid"], data["poison"]
    for rule, combine in (("mean_auc", lambda a, b: (a + b) / 2), ("min_auc", min)):
        r = fit(CNN.replace(monitor=rule, epochs=4, patience=4), train, valid, extra=poison, log=None)
        values = [combine(h["val_auc"], h["xval_auc"]) for h in r.history]
        assert r.best_epoch == 1 + values.index(max(values)), (rule, values)
    with pytest.raises(UserError, match="monitor mean_auc needs held-out validation sources"):
        fit(CNN.replace(monitor="mean_auc"), train, valid, log=None)


# --------------------------------------------------------------------------- bad input: one line
def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    code = tune.cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), (code, err)
    return err[0]


def test_bad_held_out_folders_get_one_clear_line(data: dict[str, Any], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    root = data["root"]
    one_class = tmp_path / "one_class"
    shutil.copytree(root / "valid" / "Fake", one_class / "Fake")
    empty = tmp_path / "empty"
    (empty / "Fake").mkdir(parents=True)
    (empty / "Real").mkdir()
    same_valid, same_test = tmp_path / "copy_of_valid", tmp_path / "copy_of_test" / "renamed"
    shutil.copytree(root / "valid", same_valid)
    shutil.copytree(root / "test", same_test)
    (same_test / "Fake" / "fake_0.png").rename(same_test / "Fake" / "other_name.png")  # names do not matter
    twice = tmp_path / "twice"
    for d in ("a", "b"):
        shutil.copytree(data["tmp"] / "poison", twice / d)
    cases = {one_class: "has no Real images (expected both classes", empty: "empty source folder",
             same_valid: "shares 16 of its 16 image(s) with the valid split (byte-identical",
             same_test: "shares 16 of its 16 image(s) with the test split",
             twice: "held-out validation source a shares 12 of its 12 image(s) with held-out validation source b"}
    base = ["train", "--data", str(root), "--arch", "custom_cnn", "--epochs", "1", "--image-size", "32"]
    for folder, expected in cases.items():
        out = tmp_path / "out"
        line = one_line_error(capsys, [*base, "--out", str(out), "--valid-extra", str(folder)])
        assert expected in line and not out.exists(), (folder, line)
    line = one_line_error(capsys, [*base, "--monitor", "min_auc"])
    assert "--monitor min_auc needs held-out validation sources" in line
    # the search refuses the same before it writes anything or starts Ray
    space = tmp_path / "s.yaml"
    space.write_text(TINY_SPACE)
    search = ["search", "--data", str(root), "--space", str(space), "--storage", str(tmp_path / "runs"), "--name", "x"]
    assert "with the test split" in one_line_error(capsys, [*search, "--valid-extra", str(same_test)])
    space.write_text(TINY_SPACE.replace("metric: val_auc", "metric: mean_auc"))
    assert "metric mean_auc needs held-out validation sources" in one_line_error(capsys, search)
    assert not (tmp_path / "runs").exists()


def test_train_records_the_held_out_sources(data: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert tune.cli.main(["train", "--data", str(data["root"]), "--arch", "custom_cnn", "--epochs", "2",
                          "--image-size", "32", "--conv-blocks", "1", "--base-width", "4", "--monitor", "mean_auc",
                          "--valid-extra", str(data["tmp"] / "poison"), "--out", str(out)]) == 0
    record = json.loads((out / "record.json").read_text())
    assert record["data"]["valid_extra"]["sources"][0]["fingerprint"] == data["poison"][0].fingerprint
    assert record["config"]["monitor"] == "mean_auc" and "xval_auc" in record["best"]
    header = (out / "history.csv").read_text().splitlines()[0].split(",")
    assert header.index("val_eer") < header.index("xval_auc") < header.index("xval_eer") < header.index("lr")


# --------------------------------------------------------------------------- a search with held-out sources
# The trials keep the epoch with the best mean of val_auc and xval_auc, and are scored by xval_auc there.
XSPACE = TINY_SPACE.replace("metric: val_auc", "metric: xval_auc").replace(
    "fixed: {batch_size: 16}", "fixed: {batch_size: 16, monitor: mean_auc}").replace(
    "max_epochs: 2, grace_period: 1", "max_epochs: 3, grace_period: 1")


@pytest.fixture(scope="module")
def xrun(ray_session: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("xrun")
    root = make_dataset(tmp / "data", n=10, size=32)
    gens = tmp / "gens"
    for k, name in enumerate(("gen_a", "gen_b")):
        make_dataset(gens, n=6, size=32, seed=10 + k, splits=(name,))
    run = run_tiny_search(tmp, name="xv", space=XSPACE, data=root, valid_extra=[gens])
    return {"tmp": tmp, "run": run, "gens": gens}


def test_the_search_reports_held_out_metrics_and_selects_by_the_rule(xrun: dict[str, Any]) -> None:
    run = xrun["run"]
    meta = Run(run).read()
    assert meta.rule == {"metric": "xval_auc", "mode": "max", "about": meta.rule["about"]}
    assert "averaged over the held-out validation sources" in meta.rule["about"]
    assert meta.data.valid_extra and [s["name"] for s in meta.data.valid_extra["sources"]] == ["gen_a", "gen_b"]
    assert meta.space["valid_extra"] == [str(xrun["gens"])]
    board = load_leaderboard(run)
    assert {"val_auc", "xval_auc", "xval[gen_a]_auc", "xval[gen_b]_auc"} <= set(board.columns)
    for arch in ("custom_cnn", "mobilenet_v2"):
        study = optuna.load_study(study_name=f"xv-{arch}", storage=f"sqlite:///{run / 'optuna.db'}")
        by_id = {t.user_attrs["ray_trial_id"]: t for t in study.trials}
        for t in read_trials(Run(run), meta, arch):
            row = board[board["trial_id"] == t.trial_id].iloc[0]
            mean = [(r["val_auc"] + r["xval_auc"]) / 2 for r in t.results]
            assert row["best_epoch"] == 1 + mean.index(max(mean))  # kept by the mean rule...
            kept = t.results[row["best_epoch"] - 1]
            assert row["score"] == kept["xval_auc"] == row["xval_auc"]  # ...scored by the held-out AUC there
            assert kept["xval_auc"] == pytest.approx((kept["xval[gen_a]_auc"] + kept["xval[gen_b]_auc"]) / 2)
            if by_id[t.trial_id].state == optuna.trial.TrialState.COMPLETE:
                assert by_id[t.trial_id].value == row["score"]  # Optuna's value is the held-out metric


def test_reproduce_follows_the_rule(xrun: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    run = xrun["run"]
    assert tune.cli.main(["reproduce", str(run)]) == 0
    out = capsys.readouterr().out
    assert "x 7 metrics identical" in out and "xval_auc" in out and "best_epoch" in out
    # a held-out source changed since the search: its numbers cannot be reproduced (one line)
    victim = next((xrun["gens"] / "gen_a" / "Fake").iterdir())
    original = victim.read_bytes()
    try:
        victim.write_bytes(original + b"\0")
        assert "held-out validation source gen_a changed since search xv ran" in one_line_error(
            capsys, ["reproduce", str(run)])
    finally:
        victim.write_bytes(original)
    # --resume or --extend go on with the recorded sources: --valid-extra only says where they are now, and
    # a folder without them is refused (one line, before any work)
    line = one_line_error(capsys, ["search", "--name", "xv", "--storage", str(run.parent), "--extend", "1",
                                   "--valid-extra", str(xrun["gens"] / "gen_b")])
    assert "held-out validation source gen_a in" in line and "recorded, none there now" in line


def test_finalize_keeps_selection_and_test_apart_and_shows_the_trade_off(
        xrun: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    run = xrun["tmp"] / "copy"
    shutil.copytree(xrun["run"], run)
    line = one_line_error(capsys, ["finalize", str(run), "--seeds", "1", "--extra-test", str(xrun["gens"] / "gen_b")])
    assert "extra test source gen_b" in line and "held-out validation source gen_b" in line
    assert "never reported as a test result" in line and not (run / "comparison.json").exists()
    other = make_dataset(xrun["tmp"] / "unseen", n=4, size=32, seed=30, splits=("gen_c",)) / "gen_c"
    cmp = tune.cli.finalize.finalize(run, FinalizeOptions(seeds=1, cache_dir=xrun["tmp"] / "cache", extra_test=[other]),
                                     log=lambda s: None)
    for row in cmp.rows:
        rec = json.loads((run / row.folder / "seed0" / "record.json").read_text())
        assert rec["valid_score"] == metric_value(rec["best"], "xval_auc") == row.valid_scores[0]
        assert rec["data"]["valid_extra"] == Run(run).read().data.valid_extra
    t = cmp.tradeoff
    assert t is not None
    assert {r.name for r in t.rows} == {"custom_cnn", "mobilenet_v2"}
    assert {"val_auc", "xval_auc", "xval[gen_a]_auc", "test_auc"} <= set(t.rows[0].to_plain())
    md = (run / "comparison.md").read_text()
    assert "### In-domain vs held-out validation" in md and "| Model | val_auc | xval_auc | xval[gen_a]_auc" in md
    assert ("The in-domain winner is not the held-out winner" in md) == (not t.agree)
    if not t.agree:
        assert "paired bootstrap p = " in md
    html = (run / "report.html").read_text()
    assert 'id="tradeoff"' in html and "tradeoff-scatter" in html and "could not be built" not in html
    assert "xval[gen_b]_auc" in html.split('id="leaderboard"')[1]
    assert f"--valid-extra {xrun['gens']}" in html.split('id="reproduce"')[1]  # the same search again, with them


def test_the_same_images_under_another_name_are_found(tmp_path: Path) -> None:
    a = make_dataset(tmp_path / "a", n=3, size=32, splits=("s",)) / "s"
    files = sorted(str(p) for p in a.rglob("*.png"))
    copy = tmp_path / "copy.png"
    copy.write_bytes(Path(files[2]).read_bytes())
    assert heldout.shared(files, [str(copy)]) == [(files[2], str(copy))]
    assert heldout.shared(files[:2], [str(copy)]) == []


def test_the_trade_off_sentence_names_both_winners_and_the_paired_test() -> None:
    from tune.evaluation.tradeoff import summary
    from tune.metrics import bootstrap as stats
    from tune.metrics.cells import Cell
    from tune.metrics.classification import AT_HALF
    from tune.reports import tradeoff
    from tune.runs.comparison import ModelRow
    from tune.training.records import ModelRecord

    rng = np.random.default_rng(0)
    boot = {n: {"auc": rng.normal(m, 0.02, 1000)} for n, m in (("a", 0.9), ("b", 0.8))}
    rows = [ModelRow(f"{n} (tuned)", n, "custom_cnn", "tuned", None, None, [0], [0.5], [0.5], n, 0, 0.5,
                     {AT_HALF: {"auc": Cell(m)}}) for n, m in (("a", 0.9), ("b", 0.8))]
    records = {"a": [ModelRecord(config={}, best={"val_auc": 0.95, "xval_auc": 0.55, "xval[g]_auc": 0.5,
                                                  "xval[h]_auc": 0.6})],
               "b": [ModelRecord(config={}, best={"val_auc": 0.85, "xval_auc": 0.75, "xval[g]_auc": 0.7,
                                                  "xval[h]_auc": 0.8})]}
    t = summary(rows, records, boot, 0.05)
    assert (t.in_domain_winner, t.held_out_winner, t.agree) == ("a", "b", False)
    assert t.p_value == stats.paired_p_value(boot["a"]["auc"], boot["b"]["auc"], 0.9 - 0.8)
    said = tradeoff.sentence(t)
    assert said.startswith("The in-domain winner is not the held-out winner")
    assert "a (val_auc 0.950, xval_auc 0.550)" in said and "b (val_auc 0.850, xval_auc 0.750)" in said
    assert "0.900 vs 0.800, difference +0.100, paired bootstrap p = " in said
    records["b"][0].best["val_auc"] = 0.99
    agree = summary(rows, records, boot, 0.05)
    assert agree.agree and tradeoff.sentence(agree).startswith("In-domain and held-out validation pick the same")
    md = tradeoff.markdown(agree)
    assert "| Model | val_auc | xval_auc | xval[g]_auc | xval[h]_auc | test ROC-AUC |" in md
    assert "| b (tuned) | 0.990 | 0.750 | 0.700 | 0.800 | 0.800 |" in md


def test_without_held_out_sources_the_test_split_is_not_even_listed(data: dict[str, Any],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    listed: list[Path] = []
    monkeypatch.setattr(heldout, "files_of_test_split", lambda root: listed.append(root) or [])
    assert heldout.for_training([], 32, data["train"], data["valid"], data["root"]) == ([], None)
    assert listed == []
    heldout.for_training([data["tmp"] / "poison"], 32, data["train"], data["valid"], data["root"])
    assert listed == [data["root"]]  # with held-out sources: listed, to compare bytes
