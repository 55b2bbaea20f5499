"""Accuracy against latency: pick rules on a constructed leaderboard, the Pareto front, the space's objectives,
a multi-objective study told the truth, and one two-objective search end to end (leaderboard, --pareto, --pick)."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pandas as pd
import pytest
from conftest import TINY_SPACE, make_dataset, run_tiny_search

from tune.core import UserError
from tune.runs.pareto import choose, front_mask, parse_pick
from tune.search.space import parse_space


def board() -> pd.DataFrame:
    """Best score first, as load_leaderboard sorts it."""
    rows = [("a", "lite", 1, 0.981, 12.0, "completed"), ("b", "lite", 2, 0.975, 6.0, "early_stopped"),
            ("c", "cnn", 1, 0.972, 2.0, "completed"), ("d", "cnn", 2, 0.90, 1.0, "completed"),
            ("e", "lite", 3, 0.85, 0.5, "stopped_by_asha"), ("f", "cnn", 3, 0.80, 3.0, "completed")]
    return pd.DataFrame(rows, columns=["trial_id", "arch", "trial_no", "score", "latency_ms", "ended"])


def test_pick_chooses_the_trial_the_rule_names() -> None:
    df = board()
    assert choose(df, parse_pick("best"), "max") is None  # each architecture's winner, as before
    assert choose(df, parse_pick("latency_ms<=8"), "max")["trial_id"] == "b"  # most accurate within the budget
    assert choose(df, parse_pick("latency_ms < 6"), "max")["trial_id"] == "c"
    assert choose(df, parse_pick("latency_ms<=2"), "max")["trial_id"] == "c"
    assert choose(df, parse_pick("within:0.01"), "max")["trial_id"] == "c"  # the fastest within 0.01 of 0.981
    assert choose(df, parse_pick("within:0.007"), "max")["trial_id"] == "b"
    assert choose(df, parse_pick("within:0"), "max")["trial_id"] == "a"
    with pytest.raises(UserError, match=r"no trial meets it; the closest is lite trial 3 \(e; latency_ms 0.5"):
        choose(df, parse_pick("latency_ms<=0.1"), "max")
    with pytest.raises(UserError, match="no trial has latency_ms"):
        choose(df.drop(columns="latency_ms"), parse_pick("within:0.01"), "max")


@pytest.mark.parametrize("bad", ["fastest", "latency_ms<=", "within:x", "within:-1", "latency_ms=<8"])
def test_a_bad_pick_rule_is_one_line_at_parse_time(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    from tune.cli import main

    with pytest.raises(SystemExit) as e:
        main(["finalize", "nowhere", "--pick", bad])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "--pick" in err[-1] and "Traceback" not in "\n".join(err)


def test_front_marks_the_finished_non_dominated_trials() -> None:
    df = board()
    on = front_mask(df, [("score", "max"), ("latency_ms", "min")])
    # a, b, c, d trade accuracy for speed; e is faster still but ASHA stopped it; f is beaten by c and d
    assert [t for t, m in zip(df["trial_id"], on) if m] == ["a", "b", "c", "d"]
    assert front_mask(df, []) == [False] * len(df)


def test_objectives_in_a_space() -> None:
    base = {"architectures": {"custom_cnn": {}}}
    s = parse_space({**base, "objectives": [{"val_auc": "max"}, {"latency_ms": "min"}], "sampler": "nsga2",
                     "latency": {"threads": 1, "batch": 8}})
    assert s.goals == (("val_auc", "max"), ("latency_ms", "min")) and s.metric == "val_auc" and s.mode == "max"
    assert s.sampler == "nsga2" and s.latency.batch == 8
    assert parse_space(base).goals == (("val_auc", "max"),)  # one objective: as before
    assert not s.latency.int8 and not parse_space(base).latency.onnx  # opt-in costs are off unless asked...
    int8 = parse_space({**base, "objectives": ["val_auc", "latency_int8_ms"]})
    assert int8.goals[1] == ("latency_int8_ms", "min") and int8.latency.int8  # ... or an objective names them
    assert parse_space({**base, "latency": {"int8": True}}).latency.int8
    for doc, says in (({"objectives": [{"val_speed": "min"}]}, "unknown objective 'val_speed'"),
                      ({"objectives": [{"val_auc": "up"}]}, "direction of val_auc must be max or min, got 'up'"),
                      ({"objectives": [{"latency_ms": "min"}]}, "not the cost latency_ms"),
                      ({"objectives": ["val_auc"], "sampler": "grid"}, "key 'sampler'"),
                      ({"latency": {"batch": 0}}, "latency.batch"),
                      ({"latency": {"int8": 1}}, "latency.int8': expected true or false")):
        with pytest.raises(UserError, match=says) as e:
            parse_space({**base, **doc})
        assert "\n" not in str(e.value)


def test_a_multi_objective_study_is_told_the_truth() -> None:
    """COMPLETE with both values for a finished trial; PRUNED for one ASHA stopped; FAIL for an error."""
    from tune.search.searcher import HonestOptunaSearch
    from tune.search.space import DefineByRun

    space = parse_space({"objectives": [{"val_auc": "max"}, {"latency_ms": "min"}],
                         "architectures": {"custom_cnn": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}}})
    search = HonestOptunaSearch(space=DefineByRun(space, "custom_cnn"), metric=["score", "latency_ms"],
                                mode=["max", "min"], sampler=optuna.samplers.NSGAIISampler(seed=0))
    for t in ("t1", "t2", "t3", "t4"):
        assert isinstance(search.suggest(t), dict)
    row = {"score": 0.9, "latency_ms": 3.0, "training_iteration": 2}
    search.on_trial_result("t1", row)  # no intermediate values in a multi-objective study: ignored, no error
    search.on_trial_complete("t1", {**row, "ended": "completed"})
    search.on_trial_complete("t2", {**row, "score": 0.8})  # no `ended`: ASHA stopped it
    search.on_trial_complete("t3", None, error=True)
    search.on_trial_complete("t4", {"score": 0.7, "ended": "completed"})  # a cost missing: never half a point
    states = {t.user_attrs["ray_trial_id"]: t for t in search._ot_study.trials}
    assert states["t1"].state == optuna.trial.TrialState.COMPLETE and states["t1"].values == [0.9, 3.0]
    assert states["t2"].state == optuna.trial.TrialState.PRUNED and states["t2"].values is None
    assert states["t3"].state == optuna.trial.TrialState.FAIL
    assert states["t4"].state == optuna.trial.TrialState.FAIL


MULTI = TINY_SPACE.replace("metric: val_auc\nmode: max\n", "objectives: [val_auc: max, latency_ms: min]\n"
                           "sampler: nsga2\nlatency: {threads: 1, batch: 8, repeats: 3}\n") \
    .replace("trials: 2, max_epochs: 2, grace_period: 1", "trials: 4, max_epochs: 3, grace_period: 1")


@pytest.fixture(scope="module")
def multi_run(ray_session, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("multi")
    data = make_dataset(tmp / "data", n=10, size=32)
    return run_tiny_search(tmp, name="mo", space=MULTI[:MULTI.index("  mobilenet_v2:")], data=data)


def test_a_two_objective_search(multi_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tune.cli import main
    from tune.runs.leaderboard import load_leaderboard

    df = load_leaderboard(multi_run)
    assert len(df) == 4 and (df["latency_ms"] > 0).all() and (df["params"] > 0).all() and "pareto" in df
    # the measurement is a small part of each trial (measured once, when the first kept epoch is chosen)
    assert (df["cost_s"] < df["wall_s"] + 5).all()
    study = optuna.load_study(study_name="mo-custom_cnn", storage=f"sqlite:///{multi_run / 'optuna.db'}")
    assert len(study.directions) == 2
    by_id = {t.user_attrs["ray_trial_id"]: t for t in study.trials}
    for row in df.itertuples():
        t = by_id[row.trial_id]
        if row.ended == "stopped_by_asha":
            assert t.state == optuna.trial.TrialState.PRUNED, (row, t)
        else:
            assert t.state == optuna.trial.TrialState.COMPLETE and t.values == [row.score, row.latency_ms], (row, t)
    front = df[df["pareto"]]
    assert len(front) >= 1 and set(front["ended"]) <= {"completed", "early_stopped"}
    assert main(["leaderboard", str(multi_run), "--pareto", "--format", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert sorted(r["trial_id"] for r in shown) == sorted(front["trial_id"])


@pytest.fixture(scope="module")
def picked_run(multi_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the two-objective run, finalized with 1 seed and --pick within:1 (the fastest scored trial)."""
    import shutil

    from tune.cli import main

    run = tmp_path_factory.mktemp("picked") / "mo"
    shutil.copytree(multi_run, run)
    assert main(["finalize", str(run), "--seeds", "1", "--pick", "within:1"]) == 0
    return run


def test_finalize_pick_ships_the_named_trial(picked_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tune.cli import main
    from tune.runs.leaderboard import load_leaderboard
    from tune.serving.serve import ModelChoice, model_path

    df = load_leaderboard(picked_run)
    fastest = df[df["score"].notna()].sort_values("latency_ms", kind="stable").iloc[0]
    meta = json.loads((picked_run / "run.json").read_text())
    assert meta["pick"]["rule"] == "within:1" and meta["pick"]["trial_id"] == fastest["trial_id"]
    rec = json.loads((picked_run / "models" / "picked" / "record.json").read_text())
    assert rec["trial_id"] == fastest["trial_id"] and "--pick within:1" in rec["chosen_by"]
    cmp = json.loads((picked_run / "comparison.json").read_text())
    assert fastest["trial_id"] in [r["trial_id"] for r in cmp["rows"]]  # the comparison has the picked model's row
    # ... and its paired test against the most accurate winner, on the same test resamples
    shipped = next(r for r in cmp["rows"] if r["trial_id"] == fastest["trial_id"] and r["kind"] in ("tuned", "picked"))
    top = cmp["best"]["auc"]["model"]
    p = cmp["picked"]
    assert p["model"] == shipped["name"] and p["most_accurate"] == top and p["same"] == (shipped["name"] == top)
    auc = p["metrics"]["auc"]
    assert auc["value"] == shipped["at_0.5"]["auc"]["value"]
    assert auc["most_accurate_value"] == cmp["best"]["auc"]["value"]
    if not p["same"]:
        assert auc["difference"] == pytest.approx(auc["value"] - auc["most_accurate_value"]) and 0 < auc["p_value"] <= 1
    said = (picked_run / "comparison.md").read_text()
    assert f"Shipped (finalize --pick within:1): {shipped['name']}" in said
    # what the pick bought: every model's measured costs beside its test AUC, in comparison.json and .md
    measured = cmp["costs"]["models"]
    for r in cmp["rows"]:
        c = measured[r["name"]]
        assert c["latency_ms"] > 0 and c["latency_batch_ms"] > 0 and c["params"] > 0 and c["onnx_mb"] > 0, c
    assert cmp["costs"]["settings"]["batch"] == 8  # the space's latency: settings, as the trials measured
    costs = said[said.index("### Costs"):]
    assert "ms / image, batch 1" in costs and "ms / image, batch 8" in costs and "ONNX MB" in costs
    for r in cmp["rows"]:
        assert f"| {r['model']} | " in costs and f"{measured[r['name']]['latency_ms']:.2f}" in costs
    if not p["same"]:
        line = next(ln for ln in said.splitlines() if ln.startswith("Shipped"))
        assert f"It costs {measured[shipped['name']]['latency_ms']:.2f} ms per image at batch 1 against" in line
    # serve and export default to the picked model
    assert model_path(ModelChoice(run=str(picked_run))) == picked_run / "models" / "picked" / "best.pth"
    capsys.readouterr()
    assert main(["finalize", str(picked_run), "--seeds", "1", "--pick", "latency_ms<=0.000001"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no trial meets it; the closest is custom_cnn trial" in err[0]


def test_report_draws_the_front_in_chromium(picked_run: Path) -> None:
    from browser import chromium, console_errors
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    page = picked_run / "report.html"
    html = page.read_text()
    assert 'id="pareto"' in html and "could not be built" not in html
    with chromium(1280, 900) as d:
        d.get(page.as_uri())
        WebDriverWait(d, 30).until(lambda d: d.execute_script(
            "return document.readyState === 'complete' && Array.from(document.querySelectorAll('.js-plotly-plot'))"
            ".every(e => e.querySelector('.main-svg'))"))
        assert console_errors(d) == []
        plots = d.find_elements(By.CSS_SELECTOR, "#pareto .js-plotly-plot")
        assert len(plots) == 2  # ours, and Optuna's Pareto front of the one study
        names = d.execute_script("return arguments[0].data.map(t => t.name)", plots[0])
        assert "Pareto front" in names and "custom_cnn" in names and "picked (finalize --pick)" in names
        section = d.find_element(By.ID, "pareto")
        d.execute_script("arguments[0].scrollIntoView()", section)
        assert section.is_displayed() and plots[0].size["width"] > 300
