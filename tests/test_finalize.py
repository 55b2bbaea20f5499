"""finalize and its pictures on a copy of the tiny search: seeds, the one test read, resume, numbers, PNGs."""

from __future__ import annotations

import io
import json
import math
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from splits import spy_split_reads

import tune.cli
import tune.data.images
import tune.evaluation.finalize
import tune.evaluation.retrain
import tune.training.loop
from tune.evaluation.finalize import FinalizeOptions
from tune.metrics import bootstrap as stats
from tune.metrics.classification import METRICS, Resampled, binary_metrics
from tune.runs.files import Comparison
from tune.runs.layout import DataRecord, RunRecord

ARCHS = ("custom_cnn", "mobilenet_v2")
PLOTS = ("dataset", "learning_curves", "roc", "confusion", "search_metric", "search_epochs", "importance")
TUNE_SRC = Path(tune.cli.__file__).parents[1]  # the package: every stage's modules



def numbers(comparison_json: Path) -> dict[str, Any]:
    """A comparison.json without its costs: they are this machine's timings, the rest must reproduce."""
    return {k: v for k, v in json.loads(comparison_json.read_text()).items() if k != "costs"}

def resampled(cmp: dict[str, Any], y: np.ndarray, predictors: dict[str, tuple[Any, list[float]]],
              rule: str) -> dict[str, dict[str, np.ndarray]]:
    """The bootstrap samples of these predictors at one rule on finalize's resamples (seeded by the test split's
    fingerprint): what the comparison's intervals and paired tests must come from."""
    preds = {k: stats.Predictor(np.asarray(p), {rule: list(t)}) for k, (p, t) in predictors.items()}
    return stats.bootstrap(y, preds, rng=stats.resamples_for(cmp["test_fingerprint"]))


def count_fits(mp: pytest.MonkeyPatch) -> list[str]:
    real = tune.evaluation.retrain.fit
    seen: list[str] = []

    def counting(cfg: Any, *a: Any, **k: Any) -> Any:
        seen.append(f"{cfg.arch}/{cfg.seed}")
        return real(cfg, *a, **k)

    mp.setattr(tune.evaluation.retrain, "fit", counting)  # the name finalize trains through
    return seen


@pytest.fixture(scope="module")
def finalized(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A copy of the tiny run, finalized once with 2 seeds and the baseline rows."""
    tmp = tmp_path_factory.mktemp("finalize")
    run = tmp / "tiny"
    shutil.copytree(tiny_run, run)
    with pytest.MonkeyPatch.context() as mp:
        calls, fits = spy_split_reads(mp), count_fits(mp)
        result = tune.cli.finalize.finalize(run, FinalizeOptions(seeds=2, baseline=True, cache_dir=tmp / "cache"),
                                            log=lambda s: None)
    # the tests read the file, as every reader does; it holds exactly what finalize returned
    cmp = json.loads((run / "comparison.json").read_text())
    return {"run": run, "cmp": cmp, "result": result, "calls": calls, "fits": fits, "cache": tmp / "cache"}


def test_finalize_writes_every_seed_and_the_comparison(finalized: dict[str, Any]) -> None:
    run, cmp = finalized["run"], finalized["cmp"]
    assert len(finalized["fits"]) == 8  # (2 tuned + 2 baseline) x 2 seeds
    for name in ("custom_cnn", "custom_cnn-baseline", "mobilenet_v2", "mobilenet_v2-baseline"):
        for seed in (0, 1):  # space seed 0, + i
            d = run / "finalize" / name / f"seed{seed}"
            assert {p.name for p in d.iterdir()} >= {"best.pth", "history.csv", "predictions.csv", "record.json"}
            rec = json.loads((d / "record.json").read_text())
            assert rec["seed"] == seed and rec["config"]["threads"] == 1  # the trial's cpus_per_trial
            assert rec["data"]["test_fingerprint"] and rec["threshold_rule"].startswith("threshold chosen on valid")
    assert Comparison.load(run / "comparison.json") == finalized["result"] == Comparison.from_dict(cmp)
    assert cmp == json.loads(json.dumps(finalized["result"].to_plain()))  # every field written, none lost
    md = (run / "comparison.md").read_text()
    assert md.count("| Model | Accuracy | Precision | Recall | F1-Score | ROC-AUC |") == 2  # both thresholds
    assert "threshold 0.5" in md and "Youden's J" in md and "paired bootstrap p =" in md
    header = "name,kind,variant,threshold_rule,metric,value,low,high,t_half,seeds\n"
    assert (run / "comparison.csv").read_text().startswith(header)
    tuned = {r["arch"]: r for r in cmp["rows"] if r["kind"] == "tuned"}
    # the baseline is the notebook recipe; the tuned row is the search's best trial
    base = next(r for r in cmp["rows"] if r["name"] == "custom_cnn-baseline")["config"]
    assert (base["lr"], base["head_sizes"], base["dropout"], base["conv_blocks"], base["base_width"]) == (
        1e-4, [128], 0.5, 3, 32)
    mob = next(r for r in cmp["rows"] if r["name"] == "mobilenet_v2-baseline")["config"]
    assert (mob["unfrozen_blocks"], mob["weights"], mob["patience"], mob["image_size"]) == (0, "none", 3, 32)
    for arch, row in tuned.items():
        params = json.loads((run / "trials" / "search" / f"{arch}_{row['trial_id']}" / "params.json").read_text())
        assert row["config"]["lr"] == params["lr"]


def test_numbers_match_a_recomputation_from_predictions(finalized: dict[str, Any]) -> None:
    run, cmp = finalized["run"], finalized["cmp"]
    for row in cmp["rows"]:
        probs, y = [], None
        for seed, thr in zip(row["seeds"], row["thresholds"]):
            with open(run / row["folder"] / f"seed{seed}" / "predictions.csv") as f:
                lines = [ln.split(",") for ln in f.read().splitlines()[1:]]
            y = np.array([int(ln[1]) for ln in lines])
            probs.append(np.array([float(ln[2]) for ln in lines]))
            rec = json.loads((run / row["folder"] / f"seed{seed}" / "record.json").read_text())
            assert rec["threshold"] == thr
        assert len(y) == cmp["n_test"] == 20
        for rule, thresholds in (("at_0.5", [0.5, 0.5]), ("at_valid_threshold", row["thresholds"])):
            for m in METRICS:
                values = [binary_metrics(y, p, t)[m] for p, t in zip(probs, thresholds)]
                cell = row[rule][m]
                assert cell["per_seed"] == pytest.approx(values, abs=1e-12)
                assert cell["value"] == pytest.approx(float(np.mean(values)), abs=1e-12)
                half = 12.706204736174694 * np.std(values, ddof=1) / math.sqrt(2)  # t(0.975, df=1)
                assert cell["t_half"] == pytest.approx(half, abs=1e-9)
            boot = resampled(cmp, y, {"m": (np.stack(probs), thresholds)}, rule)["m"]
            for m in METRICS:
                lo, hi = np.percentile(boot[stats.key(rule, m)], [2.5, 97.5])
                assert (row[rule][m]["low"], row[rule][m]["high"]) == pytest.approx((lo, hi), abs=1e-12)
    best = cmp["best"]["auc"]
    assert best["model"] in ARCHS and best["runner_up"] in ARCHS and 0 < best["p_value"] <= 1
    assert best["significant"] == (best["p_value"] < 0.05)


def test_exported_model_is_the_best_valid_seed_and_predict_agrees(finalized: dict[str, Any]) -> None:
    run = finalized["run"]
    for arch in ARCHS:
        meta = json.loads((run / "models" / f"{arch}.json").read_text())
        recs = [json.loads((run / "finalize" / arch / f"seed{s}" / "record.json").read_text()) for s in (0, 1)]
        scores = [r["valid_score"] for r in recs]
        assert meta["seed"] == (0 if not scores[1] > scores[0] else 1)  # by valid (max), ties to the first seed
        assert meta["data"]["test_fingerprint"] and meta["versions"]["torch"] and meta["weights_source"]
        assert meta["threshold"] == recs[meta["seed"]]["threshold"]
        src = run / "finalize" / arch / f"seed{meta['seed']}"
        assert (run / "models" / f"{arch}.pth").read_bytes() == (src / "best.pth").read_bytes()
    # predict on the test images reproduces the saved test probabilities of the exported seed
    meta = json.loads((run / "models" / "custom_cnn.json").read_text())
    out = finalized["cache"].parent / "pred.csv"
    test_dir = Path(json.loads((run / "run.json").read_text())["data"]["root"]) / "test"
    assert tune.cli.main(["predict", "--model", str(run / "models" / "custom_cnn.pth"), str(test_dir),
                          "--csv", str(out)]) == 0
    got = {ln.split(",")[0]: float(ln.split(",")[1]) for ln in out.read_text().splitlines()[1:]}
    saved = run / "finalize" / "custom_cnn" / f"seed{meta['seed']}" / "predictions.csv"
    want = {ln.split(",")[0]: float(ln.split(",")[2]) for ln in saved.read_text().splitlines()[1:]}
    assert got.keys() == want.keys() and all(got[k] == pytest.approx(want[k], abs=1e-6) for k in want)


def test_test_split_is_read_only_by_finalize(finalized: dict[str, Any]) -> None:
    test_reads = [mod for mod, split in finalized["calls"] if split == "test"]
    assert test_reads == ["tune.evaluation.finalize"]  # once per finalize, by finalize
    assert {split for _, split in finalized["calls"]} == {"train", "valid", "test"}
    # and no other module in the package even asks for it
    for src in TUNE_SRC.rglob("*.py"):
        if src.name != "finalize.py":
            assert not re.search(r"load_split\([^)]*[\"']test[\"']", src.read_text()), src.name


def test_resume_redoes_only_the_unfinished_seed(finalized: dict[str, Any], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "tiny"
    shutil.copytree(finalized["run"], run)
    (run / "finalize" / "custom_cnn" / "seed1" / "record.json").unlink()
    fits = count_fits(monkeypatch)
    monkeypatch.setenv("TUNE_CACHE_DIR", str(finalized["cache"]))
    assert tune.cli.main(["finalize", str(run), "--seeds", "2", "--baseline"]) == 0
    assert fits == ["custom_cnn/1"]
    # retraining is deterministic, so the redone seed gives back the very same numbers (costs are timings)
    assert numbers(run / "comparison.json") == numbers(finalized["run"] / "comparison.json")


def test_every_plot_is_a_png(finalized: dict[str, Any]) -> None:
    for name in PLOTS:
        path = finalized["run"] / "plots" / f"{name}.png"
        assert path.stat().st_size > 0, name
        with Image.open(path) as im:
            assert im.format == "PNG" and im.width > 100 and im.height > 100
            im.verify()


def test_importance_plot_draws_bars_with_enough_trials_and_a_note_otherwise(tmp_path: Path) -> None:
    import optuna

    from tune.reports.figures import plot_importance

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="r-custom_cnn", storage=storage, direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: t.suggest_float("lr", 0, 1) + 0.01 * t.suggest_int("blocks", 1, 3), n_trials=8)
    optuna.create_study(study_name="r-mobilenet_v2", storage=storage).optimize(
        lambda t: t.suggest_float("lr", 0, 1), n_trials=1)
    record = RunRecord(name="r", space={"architectures": {"custom_cnn": {}, "mobilenet_v2": {}}},
                       data=DataRecord(root="", train_fingerprint="", valid_fingerprint=""))
    fig = plot_importance(tmp_path, record)
    bars, empty = fig.axes
    assert [t.get_text() for t in bars.get_yticklabels()] == ["blocks", "lr"]  # lr explains the metric
    assert "too few" in empty.texts[0].get_text()


def test_bootstrap_metrics_match_binary_metrics() -> None:
    rng = np.random.default_rng(3)
    y = np.array([1] * 9 + [0] * 7)
    p = np.round(rng.random(len(y)), 1)  # rounded: plenty of ties, which AUC must count as one half
    idx = stats.stratified_indices(y, 50, rng)
    res = Resampled(y, p, idx)
    counts = res.counts(0.5)
    for b in range(len(idx)):
        want = binary_metrics(y[idx[b]], p[idx[b]], 0.5)
        for m in METRICS.values():
            got = m.resample(res) if m.ranking else m.from_counts(counts)
            assert got[b] == pytest.approx(want[m.name], abs=1e-12), m.name
    assert (y[idx] == 1).sum(1).tolist() == [9] * 50  # stratified: class counts kept


def test_paired_p_value() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(0.8, 0.02, 1000)
    assert stats.paired_p_value(a, a, 0.0) == 1.0
    assert stats.paired_p_value(a, a - 0.1 + rng.normal(0, 0.01, 1000), 0.1) < 0.01
    assert stats.paired_p_value(a, a + rng.normal(0, 0.05, 1000), 0.001) > 0.5


def test_finalize_refuses_bad_input(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert tune.cli.main(["finalize", str(tiny_run), "--seeds", "0"]) == 2
    assert tune.cli.main(["finalize", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("error: --seeds must be >= 1") and err[1].startswith("error: run not found")


def test_search_refuses_bad_seeds_before_it_searches(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """--seeds is checked as the arguments are parsed: one line, and no search runs first."""
    import tune.cli.search

    monkeypatch.setattr(tune.cli.search, "run_search", lambda opts: pytest.fail("the search ran"))
    assert tune.cli.main(["search", "--seeds", "0"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: --seeds must be >= 1, got 0"]


def test_seed_zero_retraining_is_the_trial_itself(finalized: dict[str, Any]) -> None:
    """Trials train with seed 0 and the tiny space's seed is 0: finalize's seed 0 must redo the trial exactly."""
    import pandas as pd

    from tune.runs.info import read_run, trial_record

    run = finalized["run"]
    info = read_run(run)
    for row in (r for r in finalized["cmp"]["rows"] if r["kind"] == "tuned"):
        trial = trial_record(info, row["arch"], row["trial_id"]).results
        mine = pd.read_csv(run / row["folder"] / "seed0" / "history.csv", float_precision="round_trip")
        assert len(mine) >= len(trial)  # ASHA may have stopped the trial earlier than finalize stops
        for rec, (_, got) in zip(trial, mine.iterrows()):
            assert (rec["train_loss"], rec["val_loss"], rec["val_auc"]) == (got["train_loss"], got["val_loss"],
                                                                            got["val_auc"])


def test_parallel_finalize_gives_the_same_numbers(finalized: dict[str, Any], tmp_path: Path) -> None:
    """Two retrainings at once in separate processes, each with the trials' threads: same results."""
    run = tmp_path / "tiny"
    shutil.copytree(finalized["run"], run)
    shutil.rmtree(run / "finalize")
    cmp = tune.cli.finalize.finalize(run, FinalizeOptions(seeds=2, baseline=True, cache_dir=finalized["cache"],
                                                          jobs=2), log=lambda s: None)
    assert replace(cmp, costs=None) == replace(finalized["result"], costs=None)  # costs are timings


# --------------------------------------------------------------------------- ensembles and flip TTA
VARIANTS = ("chosen_seed", "seeds", "seeds_hflip", "ensemble", "ensemble_hflip")


def read_csv(path: Path) -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
    """A predictions file read by hand (not through tune.training.records): paths, labels, every probability column."""
    import csv

    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    cols = [c for c in rows[0] if c.startswith("p_fake")]
    return ([r["path"] for r in rows], np.array([int(r["label"]) for r in rows]),
            {c: np.array([float(r[c]) for r in rows]) for c in cols})


def seed_scores(run: Path, row: dict[str, Any]) -> dict[str, Any]:
    """Every seed's valid and test P(fake), plain and flipped, as finalize saved them, stacked over seeds."""
    out: dict[str, Any] = {}
    for split, file in (("valid", "valid_predictions.csv"), ("test", "predictions.csv")):
        got = [read_csv(run / row["folder"] / f"seed{s}" / file) for s in row["seeds"]]
        out[split] = (got[0][1], np.stack([g[2]["p_fake"] for g in got]), np.stack([g[2]["p_fake_hflip"] for g in got]))
    return out


def test_flip_tta_and_ensembles_are_means_of_the_saved_probabilities(finalized: dict[str, Any]) -> None:
    from tune.inference import load, probabilities
    from tune.metrics.classification import youden_threshold

    run, cmp = finalized["run"], finalized["cmp"]
    ens = {(r["name"], r["variant"]): r for r in cmp["ensembles"]["rows"]}
    assert {v for _, v in ens} == set(VARIANTS) and len(ens) == 5 * len(cmp["rows"])
    differ = []
    for row in cmp["rows"]:
        s = seed_scores(run, row)
        (yv, vp, vf), (y, tp, tf) = s["valid"], s["test"]
        differ.append(not np.array_equal(tp, tf))
        # each seed's saved valid probabilities are what its recorded threshold was chosen on
        assert [youden_threshold(yv, p) for p in vp] == row["thresholds"]
        tta, v_tta = (tp + tf) / 2, (vp + vf) / 2
        want = {"seeds": (tp, row["thresholds"]), "seeds_hflip": (tta, [youden_threshold(yv, p) for p in v_tta]),
                "ensemble": (tp.mean(0)[None], [youden_threshold(yv, vp.mean(0))]),
                "ensemble_hflip": (tta.mean(0)[None], [youden_threshold(yv, v_tta.mean(0))])}
        for variant, (probs, thresholds) in want.items():
            got = ens[row["name"], variant]
            assert got["thresholds"] == pytest.approx(thresholds, abs=1e-12), variant
            for rule, thr in (("at_0.5", [0.5] * len(thresholds)), ("at_valid_threshold", thresholds)):
                values = [binary_metrics(y, p, t) for p, t in zip(probs, thr)]
                for m in METRICS:
                    assert got[rule][m]["value"] == pytest.approx(np.mean([v[m] for v in values]), abs=1e-12)
                # the same bootstrap (the same resamples) as every other cell of the comparison
                boot = resampled(cmp, y, {"m": (probs, thr)}, rule)["m"]
                assert (got[rule]["auc"]["low"], got[rule]["auc"]["high"]) == pytest.approx(
                    tuple(np.percentile(boot["auc"], [2.5, 97.5])), abs=1e-12)
            over_seeds = variant.startswith("seeds")
            assert (got["at_0.5"]["auc"]["t_half"] is None) == (not over_seeds)  # one predictor: no t-interval
        assert ens[row["name"], "seeds"]["at_0.5"]["auc"]["value"] == row["at_0.5"]["auc"]["value"]
    assert any(differ)  # the mirror images were scored, not the same images again (a near-constant model may tie)
    # p_fake_hflip is the model's P(fake) of the mirror image: the exported model on mirrored pixels agrees
    meta = json.loads((run / "models" / "custom_cnn.json").read_text())
    paths, _, cols = read_csv(run / "finalize" / "custom_cnn" / f"seed{meta['seed']}" / "predictions.csv")
    loaded = load(run / "models" / "custom_cnn.pth")
    x = np.stack([loaded.decode(Path(p)) for p in paths])
    assert probabilities(loaded.model, np.ascontiguousarray(x[..., ::-1])) == pytest.approx(cols["p_fake_hflip"],
                                                                                            abs=1e-6)
    assert probabilities(loaded.model, x, hflip=True) == pytest.approx(cols["p_fake_hflip"], abs=1e-6)


def test_each_predictor_is_tested_against_the_chosen_seed(finalized: dict[str, Any]) -> None:
    run, cmp = finalized["run"], finalized["cmp"]
    ens = {(r["name"], r["variant"]): r for r in cmp["ensembles"]["rows"]}
    for row in cmp["rows"]:
        i = row["seeds"].index(row["chosen_seed"])
        if row["kind"] == "tuned":  # the chosen seed is the exported one
            assert json.loads((run / "models" / f"{row['arch']}.json").read_text())["seed"] == row["chosen_seed"]
        chosen, tta = ens[row["name"], "chosen_seed"], ens[row["name"], "ensemble_hflip"]
        assert "vs_chosen" not in chosen and chosen["thresholds"] == [row["thresholds"][i]]
        y, tp, tf = seed_scores(run, row)["test"]
        probs = {"chosen_seed": tp[[i]], "ensemble_hflip": ((tp + tf) / 2).mean(0)[None]}
        for rule in ("at_0.5", "at_valid_threshold"):
            thresholds = {v: [0.5] if rule == "at_0.5" else ens[row["name"], v]["thresholds"] for v in probs}
            # the same resamples for both
            boot = resampled(cmp, y, {v: (probs[v], thresholds[v]) for v in probs}, rule)
            for m in ("auc", "accuracy"):
                assert chosen[rule][m]["value"] == row[rule][m]["per_seed"][i]
                e, diff = tta["vs_chosen"][rule][m], tta[rule][m]["value"] - chosen[rule][m]["value"]
                k = stats.key(rule, m)
                p = stats.paired_p_value(boot["ensemble_hflip"][k], boot["chosen_seed"][k], diff)
                assert (e["difference"], e["p_value"]) == pytest.approx((diff, p), abs=1e-12)
                assert e["chosen_value"] == chosen[rule][m]["value"] and e["significant"] == (p < cmp["alpha"])
            for v in VARIANTS[1:]:
                assert set(ens[row["name"], v]["vs_chosen"][rule]) == {"auc", "accuracy"}


def test_md_csv_json_and_report_have_the_ensemble_rows(finalized: dict[str, Any]) -> None:
    import csv

    from tune.reports.html import build_html

    run, cmp = finalized["run"], finalized["cmp"]
    md = (run / "comparison.md").read_text()
    table = md.split("### Ensembles and flip TTA")[1]
    assert md.count("| Model | Accuracy | Precision | Recall | F1-Score | ROC-AUC |") == 2  # the notebook's columns
    for row in cmp["rows"]:
        for label in (f"chosen seed (seed {row['chosen_seed']}, exported)", "2 seeds, each alone",
                      "2 seeds, each alone + flip TTA", "ensemble of 2 seeds |", "ensemble of 2 seeds + flip TTA"):
            assert f"| {row['model']} | {label}" in table
        e = next(r for r in cmp["ensembles"]["rows"] if r["name"] == row["name"] and r["variant"] == "ensemble")
        vs = e["vs_chosen"]["at_0.5"]["auc"]
        verdict = ("beats" if vs["difference"] > 0 else "is worse than") if vs["significant"] else \
            "does not significantly beat"
        sentence = (f"{row['model']}: the ensemble of 2 seeds {verdict} the chosen seed: AUC {vs['value']:.3f} vs "
                    f"{vs['chosen_value']:.3f} (seed {row['chosen_seed']}), {vs['difference']:+.3f}, paired bootstrap "
                    f"p = {vs['p_value']:.3f}, {'significant' if vs['significant'] else 'not significant'} at α = 0.05")
        assert sentence in table
    assert "reference" in table
    chosen_line = next(ln for ln in table.splitlines() if "chosen seed (seed" in ln)
    assert "±" not in chosen_line and " [" in chosen_line  # one model: its interval over images, no t-interval
    lines = list(csv.DictReader(io.StringIO((run / "comparison.csv").read_text())))
    assert {(r["name"], r["variant"]) for r in lines} == {(r["name"], v) for r in cmp["rows"] for v in VARIANTS}
    for line in lines:
        assert (line["t_half"] == "") == (line["variant"] in ("chosen_seed", "ensemble", "ensemble_hflip"))
        if line["variant"] == "seeds":  # the main table's numbers
            row = next(r for r in cmp["rows"] if r["name"] == line["name"])
            assert float(line["value"]) == row[line["threshold_rule"]][line["metric"]]["value"]
    saved = json.loads((run / "comparison.json").read_text())
    assert {r["variant"] for r in saved["ensembles"]["rows"]} == set(VARIANTS)
    section = build_html(run, log=lambda s: None).split('id="comparison"')[1].split("</section>")[0]
    assert "Ensembles and flip TTA" in section and "ensemble of 2 seeds + flip TTA" in section
    assert section.count("the chosen seed: AUC") == len(cmp["rows"])


def test_an_old_format_run_folder_still_reports_and_finalize_completes_it(
        finalized: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run finalized before flip TTA: seed folders without flipped or valid predictions, a comparison.json
    without ensembles. The report, the model card and evaluate still work; finalize adds what is missing from
    the saved weights (no retraining) and gives the numbers of a fresh finalize."""
    import csv

    from tune.inference import load
    from tune.reports.html import build_html
    from tune.reports.tables import comparison_csv, comparison_markdown
    from tune.serving.modelcard import model_card

    run = tmp_path / "tiny"
    shutil.copytree(finalized["run"], run)
    for valid in run.glob("finalize/*/seed*/valid_predictions.csv"):
        valid.unlink()
    for pred in run.glob("finalize/*/seed*/predictions.csv"):
        pred.write_text("".join(",".join(ln.split(",")[:3]) + "\n" for ln in pred.read_text().splitlines()))
    old = json.loads((run / "comparison.json").read_text())
    del old["ensembles"]
    (run / "comparison.json").write_text(json.dumps(old))
    html = build_html(run, log=lambda s: None)
    assert "could not be built" not in html and "Ensembles and flip TTA" not in html and "ROC-AUC" in html
    card = model_card(load(run / "models" / "custom_cnn.pth"))
    assert card["test_metrics"]["n_test"] == 20 and card["test_metrics"]["rules"]["at_0.5"]["auc"]["low"] is not None
    test_dir = Path(json.loads((run / "run.json").read_text())["data"]["root"]) / "test"
    assert tune.cli.main(["evaluate", "--run", str(run), str(test_dir), "--out", str(tmp_path / "eval")]) == 0
    assert "Ensembles" not in comparison_markdown(Comparison.from_dict(old))
    lines = list(csv.DictReader(io.StringIO(comparison_csv(Comparison.from_dict(old)))))
    assert len(lines) == 2 * 7 * len(old["rows"]) and {ln["variant"] for ln in lines} == {"seeds"}

    fits = count_fits(monkeypatch)
    monkeypatch.setenv("TUNE_CACHE_DIR", str(finalized["cache"]))
    assert tune.cli.main(["finalize", str(run), "--seeds", "2", "--baseline"]) == 0
    assert fits == []  # every seed kept: only its missing predictions were scored, from its saved weights
    for new in run.glob("finalize/*/seed*/*predictions.csv"):
        assert new.read_bytes() == (finalized["run"] / new.relative_to(run)).read_bytes(), new
    assert numbers(run / "comparison.json") == numbers(finalized["run"] / "comparison.json")


# --------------------------------------------------------------------------- one pipeline for test results
def test_finalize_and_evaluate_give_identical_numbers_for_the_same_model_and_images(
        finalized: dict[str, Any], tmp_path: Path) -> None:
    """The exported model (finalize's "chosen seed" predictor) scored by `evaluate` on the test folder: the same
    engine, the same images in the same order, resamples seeded by the same content fingerprint, so every cell,
    its interval included, is the same number."""
    run = finalized["run"]
    record = json.loads((run / "run.json").read_text())
    test_dir = Path(record["data"]["root"]) / "test"
    cmp = json.loads((run / "comparison.json").read_text())
    chosen = {r["name"]: r for r in cmp["ensembles"]["rows"] if r["variant"] == "chosen_seed" and r["kind"] == "tuned"}
    out = tmp_path / "eval"
    models = [str(run / "models" / f"{arch}.pth") for arch in chosen]
    assert tune.cli.main(["evaluate", *(x for m in models for x in ("--model", m)), str(test_dir),
                          "--out", str(out)]) == 0
    ev = json.loads((out / "evaluation.json").read_text())
    assert ev["sources"][0]["fingerprint"] == cmp["test_fingerprint"]  # the same images, the same resamples
    compared = 0
    for row in (r for r in ev["rows"] if r["source"] != "mean"):
        arch = next(m["arch"] for m in ev["models"] if m["name"] == row["model"])
        for rule in ("at_0.5", "at_valid_threshold"):
            for metric, cell in row[rule].items():
                mine = chosen[arch][rule][metric]
                assert (cell["value"], cell["low"], cell["high"]) == (mine["value"], mine["low"], mine["high"]), (
                    arch, rule, metric)
                compared += 1
    assert compared == 2 * 2 * len(METRICS)


def test_one_cell_type_reads_every_schema() -> None:
    from tune.metrics.cells import Cell, cell_of

    new = Cell(0.9, 0.8, 0.95, 0.02, (0.88, 0.92))
    assert cell_of(new.to_dict()) == new and new.text() == "0.900 ± 0.020 [0.800, 0.950]"
    old_finalize = {"mean": 0.9, "t_half": 0.02, "t_low": 0.88, "t_high": 0.92, "per_seed": [0.88, 0.92],
                    "boot_low": 0.8, "boot_high": 0.95}
    assert cell_of(old_finalize) == new
    assert cell_of({"value": 0.7, "low": 0.6, "high": 0.8}).text() == "0.700 [0.600, 0.800]"  # old evaluate
    assert cell_of({"value": None, "low": None, "high": None}).text() == "n/a" == cell_of(None).text()
