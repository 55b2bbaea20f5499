"""evaluate: sources in every layout, numbers equal to scikit-learn's, perturbations, paired tests, bad input."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import make_dataset
from PIL import Image
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, roc_auc_score

import tune.cli
import tune.evaluation.retrain
from tune import inference
from tune.core import UserError, atomic_torch_save, atomic_write_json, file_sha256
from tune.data.images import decode_image, decode_rgb
from tune.data.perturb import Condition, model_input, native, parse_perturb
from tune.data.sources import find_sources
from tune.metrics import bootstrap as stats
from tune.metrics.classification import METRICS, Resampled, binary_metrics
from tune.training.config import TrainConfig
from tune.training.loop import make_model

RESAMPLES = "200"  # enough for intervals and p-values in tests, and fast


def save_detector(path: Path, *, size: int = 32, seed: int = 3, threshold: float = 0.5) -> Path:
    """An untrained custom CNN saved as finalize exports one: ARCH.pth + ARCH.json with the weights' sha256."""
    cfg = TrainConfig.of(arch="custom_cnn", image_size=size, conv_blocks=1, base_width=4, head_sizes=(8,), seed=seed)
    atomic_torch_save(path, make_model(cfg).state_dict())
    atomic_write_json(path.with_suffix(".json"), {"config": cfg.to_dict(), "threshold": threshold, "seed": seed,
                                                  "weights_sha256": file_sha256(path), "run": "r", "trial_id": "t"})
    return path


def source(folder: Path, *, fake: str = "Fake", real: str = "Real", n: int = 10, seed: int = 0) -> Path:
    """One source folder with class folders named as given (make_dataset writes Fake/ and Real/)."""
    make_dataset(folder.parent / f".tmp-{folder.name}", n=n, size=40, seed=seed, splits=("s",))
    folder.mkdir(parents=True)
    for cls, name in (("Fake", fake), ("Real", real)):
        shutil.move(folder.parent / f".tmp-{folder.name}" / "s" / cls, folder / name)
    shutil.rmtree(folder.parent / f".tmp-{folder.name}")
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `train --out` folder (best.pth + record.json with a valid-chosen threshold), 1 epoch at 32 px."""
    tmp = tmp_path_factory.mktemp("trained")
    data = make_dataset(tmp / "data", n=16, size=40)
    args = ["train", "--data", str(data), "--arch", "custom_cnn", "--image-size", "32", "--epochs", "1",
            "--conv-blocks", "1", "--base-width", "4", "--head-sizes", "8", "--out", str(tmp / "train")]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNE_CACHE_DIR", str(tmp / "cache"))
        assert tune.cli.main(args) == 0
    return tmp / "train" / "best.pth"


@pytest.fixture(scope="module")
def evaluated(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two models (different sizes), a parent of two generators in both namings plus a lower-case source,
    three perturbations; run through the CLI once."""
    tmp = tmp_path_factory.mktemp("evaluated")
    other = save_detector(tmp / "models" / "custom_cnn.pth", size=40, seed=5)
    gens = tmp / "gens"
    source(gens / "gen_a", seed=1)
    source(gens / "gen_b", fake="1_fake", real="0_real", seed=2)
    lower = source(tmp / "lower", fake="fake", real="REAL", seed=3)
    out = tmp / "out"
    args = ["evaluate", "--model", str(trained), "--model", str(other), str(gens), str(lower),
            "--perturb", "jpeg=50", "blur=1", "resize=0.5", "--out", str(out), "--resamples", RESAMPLES]
    with pytest.MonkeyPatch.context() as mp:
        printed: list[str] = []
        mp.setattr("builtins.print", lambda *a, **k: printed.append(" ".join(map(str, a))))
        assert tune.cli.main(args) == 0
    return {"out": out, "ev": json.loads((out / "evaluation.json").read_text()), "printed": "\n".join(printed),
            "models": {"train": trained, "custom_cnn": other}, "args": args, "tmp": tmp}


def read_scores(out: Path) -> dict[tuple[str, str, str], tuple[list[str], np.ndarray, np.ndarray]]:
    rows: dict[tuple[str, str, str], list[dict[str, str]]] = {}
    with open(out / "scores.csv", newline="") as f:
        for r in csv.DictReader(f):
            rows.setdefault((r["model"], r["source"], r["condition"]), []).append(r)
    return {k: ([r["path"] for r in v], np.array([int(r["label"]) for r in v]),
                np.array([float(r["p_fake"]) for r in v])) for k, v in rows.items()}


def test_layouts_fake_real_any_case_cnndetection_and_parents(tmp_path: Path) -> None:
    source(tmp_path / "one", fake="FAKE", real="real", n=3)
    source(tmp_path / "parent" / "gan", fake="1_fake", real="0_real", n=2)
    source(tmp_path / "parent" / "diffusion", fake="Fake", real="Real", n=4)
    for cat in ("airplane", "cat"):  # CNNDetection's per-category folders form one generator
        source(tmp_path / "parent" / "progan" / cat, fake="1_fake", real="0_real", n=2)
    (tmp_path / "parent" / "notes.txt").write_text("ignored: not a folder")
    (tmp_path / "again" / "one").mkdir(parents=True)
    source(tmp_path / "again" / "one" / "x", n=1)
    found = find_sources([tmp_path / "one", tmp_path / "parent", tmp_path / "again"])
    got = {s.name: (s.n_fake, s.n_real) for s in found}
    # a repeated name ("one") gets its parent folder's name in front, on both sources
    assert got == {f"{tmp_path.name}/one": (3, 3), "diffusion": (4, 4), "gan": (2, 2), "progan": (4, 4),
                   "again/one": (1, 1)}
    assert len({s.fingerprint() for s in found}) == len(found)


def test_per_source_numbers_equal_sklearn_and_inputs_are_the_models_own(evaluated: dict[str, Any]) -> None:
    ev, out = evaluated["ev"], evaluated["out"]
    assert [s["name"] for s in ev["sources"]] == ["gen_a", "gen_b", "lower"]
    assert [m["name"] for m in ev["models"]] == ["train", "custom_cnn"]
    assert [c["name"] for c in ev["conditions"]] == ["clean", "jpeg=50", "blur=1", "resize=0.5"]
    assert ev["bootstrap"] == {"resamples": 200, "seed": [0, "each source's fingerprint"], "stratified": True,
                            "level": 0.95}
    assert len(ev["rows"]) == 2 * 4 * (3 + 1)
    scores = read_scores(out)
    models = {m["name"]: m for m in ev["models"]}
    for row in (r for r in ev["rows"] if r["source"] != "mean"):
        paths, y, p = scores[row["model"], row["source"], row["condition"]]
        thr = models[row["model"]]["threshold"]
        assert (row["n_fake"], row["n_real"]) == (int(y.sum()), int((y == 0).sum())) == (10, 10)
        for rule in ("at_0.5", "at_valid_threshold"):  # threshold-free: the same cell under either rule
            assert row[rule]["auc"]["value"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
            assert row[rule]["ap"]["value"] == pytest.approx(average_precision_score(y, p), abs=1e-12)
            assert row[rule]["eer"]["value"] == pytest.approx(binary_metrics(y, p)["eer"], abs=1e-12)
        for rule, t in (("at_valid_threshold", thr), ("at_0.5", 0.5)):
            assert row[rule]["accuracy"]["value"] == pytest.approx(accuracy_score(y, p >= t))
            assert row[rule]["f1"]["value"] == pytest.approx(f1_score(y, p >= t, zero_division=0))
        for cell in [*row["at_0.5"].values(), *row["at_valid_threshold"].values()]:
            assert cell["low"] <= cell["high"]
    # The mean row is the mean of the sources' values.
    for row in (r for r in ev["rows"] if r["source"] == "mean"):
        per = [r for r in ev["rows"] if r["model"] == row["model"] and r["condition"] == row["condition"]
               and r["source"] != "mean"]
        assert row["at_0.5"]["auc"]["value"] == pytest.approx(np.mean([r["at_0.5"]["auc"]["value"] for r in per]))
        assert row["n_fake"] == 30 and row["note"] == "mean over 3 source(s)"
    # Clean inputs are exactly what the loaded model scores on its own decode (size from its record).
    for name, path in evaluated["models"].items():
        m = inference.load(path)
        paths, _, p = scores[name, "gen_b", "clean"]
        assert np.array_equal(m.probabilities(np.stack([m.decode(Path(q)) for q in paths])), p)
    # Printed as a table, and the plots are PNGs.
    assert "| Model | Source | Fake | Real | ROC-AUC | Average precision | EER |" in evaluated["printed"]
    # (with a Grad-CAM panel per model: the clean images of every source, the models' own inputs)
    assert set(ev["plots"]) == {"auc_by_source", "roc_by_source", "auc_vs_severity", "cam_train", "cam_custom_cnn"}
    assert "![cam_train](plots/cam_train.png)" in (out / "evaluation.md").read_text()
    for rel in ev["plots"].values():
        assert (out / rel).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "evaluation.md").read_text().startswith("# Evaluation")
    # long format: one line per row, threshold rule and metric
    assert len((out / "evaluation.csv").read_text().splitlines()) == 1 + len(ev["rows"]) * 2 * len(METRICS)


def test_paired_bootstrap_per_source_and_overall(evaluated: dict[str, Any]) -> None:
    ev = evaluated["ev"]
    clean = [p for p in ev["paired"] if p["condition"] == "clean" and p["metric"] == "auc"]
    assert [p["source"] for p in clean] == ["gen_a", "gen_b", "lower", "overall"]
    by = {(r["model"], r["source"]): r for r in ev["rows"] if r["condition"] == "clean"}
    for p in clean:
        src = "mean" if p["source"] == "overall" else p["source"]
        a, b = by["train", src]["at_0.5"]["auc"]["value"], by["custom_cnn", src]["at_0.5"]["auc"]["value"]
        assert p["difference"] == pytest.approx(a - b)
        assert 0 < p["p_value"] <= 1 and p["significant"] == (p["p_value"] < 0.05)


def test_bootstrap_is_seeded_and_perturbations_change_scores(evaluated: dict[str, Any]) -> None:
    args = list(evaluated["args"])
    again = evaluated["tmp"] / "again"
    args[args.index("--out") + 1] = str(again)
    assert tune.cli.main(args) == 0
    ev2 = json.loads((again / "evaluation.json").read_text())
    assert ev2["rows"] == evaluated["ev"]["rows"] and ev2["paired"] == evaluated["ev"]["paired"]
    scores = read_scores(evaluated["out"])
    for cond in ("jpeg=50", "blur=1", "resize=0.5"):
        assert not np.array_equal(scores["train", "gen_a", cond][2], scores["train", "gen_a", "clean"][2])


def test_jpeg_50_changes_pixels_identically_every_run(tmp_path: Path) -> None:
    img = make_dataset(tmp_path, n=1, size=64, splits=("s",)) / "s" / "Fake" / "fake_0.png"
    im = decode_rgb(img)
    clean = model_input(native(im, Condition()), Condition(), 48)
    assert np.array_equal(clean, decode_image(img, 48))  # clean = what every model is trained on
    for c in parse_perturb(["jpeg=50", "blur=2", "resize=0.25"])[1:]:
        a = model_input(native(im, c), c, 48)
        b = model_input(native(decode_rgb(img), c), c, 48)
        assert a.shape == (3, 48, 48) and a.dtype == np.uint8
        assert np.array_equal(a, b), c.name  # deterministic
        assert np.abs(a.astype(int) - clean).mean() > 0.5, c.name  # really changes the pixels
    assert np.array_equal(np.asarray(native(im, Condition("jpeg", 50))),
                          np.asarray(Image.open(_jpeg_bytes(im, 50)).convert("RGB")))  # PIL's JPEG at quality 50


def _jpeg_bytes(im: Image.Image, q: int) -> Any:
    import io

    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=q)
    buf.seek(0)
    return buf


def test_parse_perturb() -> None:
    got = parse_perturb(["jpeg=95,75", "blur=1,2 resize=0.5", "jpeg=75"])
    assert [c.name for c in got] == ["clean", "jpeg=95", "jpeg=75", "blur=1", "blur=2", "resize=0.5"]
    for bad in ("sharpen=1", "jpeg", "jpeg=", "jpeg=101", "jpeg=0", "jpeg=7.5", "blur=0", "blur=-1", "blur=nan",
                "resize=1", "resize=2", "resize=abc"):
        with pytest.raises(UserError):
            parse_perturb([bad])


def test_one_class_source_says_undefined(trained: Path, tmp_path: Path) -> None:
    only_fake = source(tmp_path / "only_fake", n=4)
    shutil.rmtree(only_fake / "Real")
    both = source(tmp_path / "both", n=4, seed=1)
    out = tmp_path / "out"
    assert tune.cli.main(["evaluate", "--model", str(trained), str(only_fake), str(both), "--out", str(out),
                          "--resamples", RESAMPLES]) == 0
    ev = json.loads((out / "evaluation.json").read_text())
    row = next(r for r in ev["rows"] if r["source"] == "only_fake")
    undefined = {"value": None, "low": None, "high": None, "t_half": None, "per_seed": []}
    assert row["at_0.5"]["auc"] == row["at_0.5"]["ap"] == row["at_0.5"]["eer"] == undefined
    assert row["note"] == "only Fake images: AUC, AP and EER undefined"
    assert row["at_0.5"]["recall"]["value"] is not None and row["n_real"] == 0
    mean = next(r for r in ev["rows"] if r["source"] == "mean")
    both_row = next(r for r in ev["rows"] if r["source"] == "both")
    assert mean["at_0.5"]["auc"]["value"] == both_row["at_0.5"]["auc"]["value"]
    assert "over the 1 with both classes" in mean["note"]
    assert "undefined" in (out / "evaluation.md").read_text()
    # A source's intervals depend on its content and the seed, not on the other sources evaluated with it.
    alone = tmp_path / "alone"
    assert tune.cli.main(["evaluate", "--model", str(trained), str(both), "--out", str(alone),
                          "--resamples", RESAMPLES]) == 0
    assert json.loads((alone / "evaluation.json").read_text())["rows"][0] == both_row


def test_skip_bad_images_skips_and_counts(trained: Path, tmp_path: Path) -> None:
    src = source(tmp_path / "gen", n=4)
    (src / "Fake" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    out = tmp_path / "out"
    assert tune.cli.main(["evaluate", "--model", str(trained), str(src), "--out", str(out), "--skip-bad-images",
                          "--resamples", RESAMPLES]) == 0
    ev = json.loads((out / "evaluation.json").read_text())
    assert ev["sources"][0]["skipped"] == [str(src / "Fake" / "broken.png")] and ev["sources"][0]["n_fake"] == 4
    assert ev["rows"][0]["note"] == "1 unreadable image(s) skipped"


def test_run_means_every_exported_winner(tmp_path: Path) -> None:
    run = tmp_path / "results" / "myrun"
    (run / "run.json").parent.mkdir(parents=True)
    (run / "run.json").write_text("{}")
    for arch in ("custom_cnn", "other"):
        save_detector(run / "models" / f"{arch}.pth")
    src = source(tmp_path / "gen", n=4)
    out = tmp_path / "out"
    assert tune.cli.main(["evaluate", "--run", "myrun", "--storage", str(tmp_path / "results"), str(src),
                          "--out", str(out), "--resamples", RESAMPLES]) == 0
    ev = json.loads((out / "evaluation.json").read_text())
    assert [m["name"] for m in ev["models"]] == ["custom_cnn", "other"] and ev["paired"]


def _bad_cases(tmp: Path, model: Path) -> dict[str, tuple[list[str], str]]:
    good = source(tmp / "good", n=3)
    empty = tmp / "empty"
    (empty / "Fake").mkdir(parents=True)
    (empty / "Real").mkdir()
    unreadable = source(tmp / "unreadable", n=3)
    (unreadable / "Real" / "bad.jpg").write_bytes(b"not a jpeg")
    (unreadable / "Fake" / "zero.png").write_bytes(b"")
    parent = tmp / "parent"
    source(parent / "fine", n=2)
    (parent / "stray" / "images").mkdir(parents=True)
    swapped = tmp / "swapped" / "m.pth"
    save_detector(swapped)
    atomic_torch_save(swapped, make_model(TrainConfig.of(arch="custom_cnn", image_size=32, conv_blocks=1, base_width=4,
                                                      head_sizes=(8,), seed=9)).state_dict())
    reshaped = save_detector(tmp / "reshaped" / "m.pth")
    rec = json.loads(reshaped.with_suffix(".json").read_text())
    rec["config"]["base_width"] = 8
    rec.pop("weights_sha256")
    reshaped.with_suffix(".json").write_text(json.dumps(rec))
    (tmp / "emptyrun").mkdir()
    (tmp / "emptyrun" / "run.json").write_text("{}")
    m, g = ["--model", str(model)], str(good)
    return {
        "empty source": ([*m, str(empty)], "empty source folder"),
        "missing folder": ([*m, str(tmp / "nope")], "data folder not found"),
        "not a source": ([*m, str(parent)], "is not a source"),
        "unreadable images": ([*m, str(unreadable)], "2 unreadable image(s)"),
        "model replaced": (["--model", str(swapped), g], "does not match its record"),
        "model shapes": (["--model", str(reshaped), g], "does not match its record"),
        "model missing": (["--model", str(tmp / "none.pth"), g], "model file not found"),
        "unknown perturbation": ([*m, g, "--perturb", "sharpen=1"], "unknown perturbation"),
        "bad jpeg quality": ([*m, g, "--perturb", "jpeg=150"], "bad --perturb severity jpeg='150'"),
        "bad blur sigma": ([*m, g, "--perturb", "blur=0"], "bad --perturb severity blur='0'"),
        "bad resize factor": ([*m, g, "--perturb", "resize=1.5"], "bad --perturb severity resize='1.5'"),
        "run without models": (["--run", str(tmp / "emptyrun"), g], "has no exported models"),
        "too few resamples": ([*m, g, "--resamples", "5"], "--resamples must be >= 10"),
    }


def test_every_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = save_detector(tmp_path / "models" / "custom_cnn.pth")
    for case, (args, expected) in _bad_cases(tmp_path, model).items():
        out = tmp_path / "out" / case.replace(" ", "_")
        code = tune.cli.main(["evaluate", "--out", str(out), "--resamples", RESAMPLES, *args])  # a case's own wins
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, case
        assert len(err) == 1 and err[0].startswith("error:") and expected in err[0], (case, err)
        assert not out.exists(), case
        if case == "unreadable images":  # listed, with why
            assert "bad.jpg (unreadable" in err[0] and "zero.png (zero bytes)" in err[0]


def test_vectorised_ranking_metrics_equal_sklearn_on_every_resample() -> None:
    rng = np.random.default_rng(1)
    for _ in range(10):
        n = int(rng.integers(4, 50))
        y = rng.integers(0, 2, n)
        y[:2] = (0, 1)
        p = np.round(rng.random(n), int(rng.integers(1, 3)))  # coarse scores: many ties
        idx = stats.stratified_indices(y, 40, rng)
        res = Resampled(y, p, idx)
        got = {m: METRICS[m].resample(res) for m in ("auc", "ap", "eer")}
        for k in range(len(idx)):
            assert got["auc"][k] == pytest.approx(roc_auc_score(y[idx[k]], p[idx[k]]), abs=1e-12)
            assert got["ap"][k] == pytest.approx(average_precision_score(y[idx[k]], p[idx[k]]), abs=1e-12)
            assert got["eer"][k] == pytest.approx(binary_metrics(y[idx[k]], p[idx[k]])["eer"], abs=1e-12)


@pytest.mark.slow
def test_finalize_extra_test_adds_the_evaluation(tiny_run: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "tiny"
    shutil.copytree(tiny_run, run)
    gens = tmp_path / "gens"
    source(gens / "gen_a", n=4)
    source(gens / "gen_b", fake="1_fake", real="0_real", n=4, seed=1)
    fits: list[str] = []
    real_fit = tune.evaluation.retrain.fit
    monkeypatch.setattr(tune.evaluation.retrain, "fit",
                        lambda cfg, *a, **k: fits.append(cfg.arch) or real_fit(cfg, *a, **k))
    # A bad --extra-test folder fails before any training, and writes nothing.
    assert tune.cli.main(["finalize", str(run), "--seeds", "1", "--extra-test", str(tmp_path / "nope")]) == 2
    assert fits == [] and not (run / "comparison.json").exists()
    assert capsys.readouterr().err.startswith("error: data folder not found")
    assert tune.cli.main(["finalize", str(run), "--seeds", "1", "--extra-test", str(gens)]) == 0
    cmp = json.loads((run / "comparison.json").read_text())
    ev = cmp["evaluation"]
    assert {m["name"] for m in ev["models"]} == {"custom_cnn", "mobilenet_v2"}
    assert [s["name"] for s in ev["sources"]] == ["gen_a", "gen_b"] and len(ev["rows"]) == 2 * 3
    for rel in ev["plots"].values():
        assert (run / rel).is_file()  # relative to the run folder, where comparison.json lives
    md = (run / "comparison.md").read_text()
    assert "## Extra test sets (exported winners)" in md and "| custom_cnn | gen_b |" in md
    assert json.loads((run / "extra-test" / "evaluation.json").read_text())["rows"] == ev["rows"]
