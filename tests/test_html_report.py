"""report.html: built from a real tiny run (finalized with 1 seed), opened in headless Chromium; the
report of a run without finalize; Optuna's charts from the same-budget trials only; the evaluation tables."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from browser import chromium, console_errors, network_requests

import tune.cli
import tune.cli.finalize
import tune.cli.search
import tune.search.driver
from tune.evaluation.finalize import FinalizeOptions
from tune.reports.charts import study_charts
from tune.reports.html import build_html

ARCHS = ("custom_cnn", "mobilenet_v2")
PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True}


@pytest.fixture(scope="module")
def finalized(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny run, finalized with 1 seed: finalize itself writes report.html."""
    tmp = tmp_path_factory.mktemp("report")
    run = tmp / "tiny"
    shutil.copytree(tiny_run, run)
    tune.cli.finalize.finalize(run, FinalizeOptions(seeds=1, cache_dir=tmp / "cache"), log=lambda s: None)
    return run


def complete_trials(run: Path) -> dict[str, int]:
    import optuna

    storage = f"sqlite:///{run / 'optuna.db'}"
    return {a: sum(t.state == optuna.trial.TrialState.COMPLETE
                   for t in optuna.load_study(study_name=f"tiny-{a}", storage=storage).trials) for a in ARCHS}


def open_report(driver: Any, page: Path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(page.as_uri())
    WebDriverWait(driver, 30).until(lambda d: d.execute_script(
        "return document.readyState === 'complete' && Array.from(document.querySelectorAll('.js-plotly-plot'))"
        ".every(e => e.querySelector('.main-svg'))"))


def test_report_renders_in_chromium_offline(finalized: Path) -> None:
    from selenium.webdriver.common.by import By

    page = finalized / "report.html"
    html = page.read_text()
    assert not re.search(r'(src|href)="(https?:)?//', html.split("</head>")[1])  # no remote script, image, font
    assert "could not be built" not in html
    with chromium(1280, 900) as d:
        open_report(d, page)
        assert console_errors(d) == []
        # data: URIs are the embedded images, read from the page itself; nothing else may be asked for
        assert [u for u in network_requests(d) if not u.startswith("data:")] == [page.as_uri()]
        verdict = d.find_element(By.ID, "verdict")
        assert verdict.is_displayed() and "Best model by test ROC-AUC" in verdict.text
        assert ("significant at" in verdict.text) and "paired bootstrap p =" in verdict.text
        # the key column (ROC-AUC, what the verdict is about) is on screen at 1280 px without scrolling sideways
        auc = [h for h in d.find_elements(By.CSS_SELECTOR, "#comparison th") if h.text.startswith("ROC-AUC")]
        assert auc
        for th in auc:
            d.execute_script("arguments[0].scrollIntoView({block: 'center', inline: 'nearest'})", th)
            assert d.execute_script("return arguments[0].closest('.scroll').scrollLeft", th) == 0
            assert d.execute_script("return arguments[0].getBoundingClientRect().right", th) <= 1280
        for section in ("comparison", "leaderboard"):
            rows = d.find_elements(By.CSS_SELECTOR, f"#{section} tbody tr")
            for arch in ARCHS:
                row = next(r for r in rows if r.find_element(By.TAG_NAME, "td").text.startswith(arch)
                           or arch in [c.text for c in r.find_elements(By.TAG_NAME, "td")])
                d.execute_script("arguments[0].scrollIntoView()", row)
                assert row.is_displayed(), (section, arch)
        # every plotly chart on the page has drawn (an SVG), one per chart the page asks for
        plots = d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot")
        assert len(plots) == html.count('class="plotly-graph-div"')
        assert all(p.find_elements(By.CSS_SELECTOR, ".main-svg") for p in plots)
        if any(n >= 2 for n in complete_trials(finalized).values()):
            assert len(plots) >= 2  # history and parallel coordinates of that architecture
        for img in d.find_elements(By.CSS_SELECTOR, "main img"):  # ROC, confusion, learning curves, epochs
            assert d.execute_script("return arguments[0].naturalWidth", img) > 100
        # the leaderboard sorts by a column on a click, both ways
        board = d.find_element(By.CSS_SELECTOR, "#leaderboard table")
        header = next(h for h in board.find_elements(By.TAG_NAME, "th") if h.text.startswith("epochs"))

        def column() -> list[float]:
            i = [h.text.split(" ")[0] for h in board.find_elements(By.TAG_NAME, "th")].index("epochs")
            return [float(r.find_elements(By.TAG_NAME, "td")[i].get_attribute("data-v"))
                    for r in board.find_elements(By.CSS_SELECTOR, "tbody tr")]

        d.execute_script("arguments[0].click()", header)
        assert column() == sorted(column())
        d.execute_script("arguments[0].click()", header)
        assert column() == sorted(column(), reverse=True)


def test_report_shows_where_the_winners_looked(finalized: Path) -> None:
    """finalize draws each winner's Grad-CAM panel on the test split; the report embeds them. MobileNetV2 at
    the tiny run's 32 px has a 1x1 last feature map: its picture says so instead."""
    from PIL import Image

    section = (finalized / "report.html").read_text().split('id="explain"')[1].split("</section>")[0]
    assert "Where the winners looked" in section and "most confident fakes" in section
    for arch in ARCHS:
        assert f'alt="Grad-CAM panel of {arch} on the test split"' in section
    panel, why = (Image.open(finalized / "plots" / f"cam_{arch}.png") for arch in ARCHS)
    assert panel.height > 600 and why.height < 300  # 4 rows of images; one line of text


def test_report_fits_a_phone_screen(finalized: Path) -> None:
    with chromium() as d:
        d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
        open_report(d, finalized / "report.html")
        width, scroll = d.execute_script("return [document.documentElement.clientWidth, "
                                         "document.documentElement.scrollWidth]")
        assert width == 390 and scroll <= width  # wide tables scroll inside their own box, not the page
        charts = d.execute_script("return Array.from(document.querySelectorAll('.js-plotly-plot')).map("
                                  "e => [e.getBoundingClientRect().right, e.closest('section')"
                                  ".getBoundingClientRect().right])")
        assert all(right <= section for right, section in charts)


def test_report_of_a_run_without_finalize(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "tiny"
    shutil.copytree(tiny_run, run)
    shutil.rmtree(next((run / "trials" / "search").glob("custom_cnn_*")))  # as if one trial had not started
    assert tune.cli.main(["report", "tiny", "--storage", str(tmp_path)]) == 0
    assert "wrote" in capsys.readouterr().out
    html = (run / "report.html").read_text()
    assert "Not in this report yet" in html and "finalize has not run" in html
    assert "3 of 4 trials have ended so far" in html
    assert 'id="verdict"' not in html and 'id="comparison"' not in html and 'id="curves"' not in html
    for section in ("leaderboard", "search", "epochs", "dataset", "reproduce"):
        assert f'id="{section}"' in html
    assert "could not be built" not in html
    # counts per split and class as the search recorded them (make_dataset: 10 per class and split)
    assert "<td>train</td><td>10</td><td>10</td><td>20</td>" in html and "not read until finalize" in html
    assert "python -m tune search --data" in html and "python -m tune finalize" not in html.split('id="reproduce"')[1]


def test_search_with_no_finalize_writes_the_report(tiny_run: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "results" / "tiny"
    shutil.copytree(tiny_run, run)
    monkeypatch.setattr(tune.cli.search, "run_search", lambda opts: run)  # the search itself is tested elsewhere
    assert tune.cli.main(["search", "--data", str(tmp_path), "--name", "tiny", "--no-finalize"]) == 0
    assert (run / "report.html").is_file() and not (run / "comparison.json").exists()


def test_the_reproduce_commands_parse(finalized: Path) -> None:
    """Every command the report's "how to reproduce" section prints is accepted by the real parser, as printed
    (a renamed or re-declared option would otherwise break these commands without a test noticing)."""
    import html as html_module
    import shlex

    page = (finalized / "report.html").read_text()
    block = re.search(r"<pre>(.*?)</pre>", page.split('id="reproduce"')[1], re.S)
    assert block
    commands = [shlex.split(line) for line in html_module.unescape(block.group(1)).splitlines()
                if line and not line.startswith("#")]
    assert [c[3] for c in commands] == ["search", *["reproduce"] * len(ARCHS), "finalize"]
    parser = tune.cli.build_parser()
    for c in commands:
        assert c[:3] == ["python", "-m", "tune"]
        args = parser.parse_args(c[3:])
        assert args.command == c[3] and Path(args.storage) == finalized.parent.absolute()


def test_report_refuses_a_missing_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert tune.cli.main(["report", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.startswith("error: run not found")
    assert not list(tmp_path.iterdir())


def test_charts_use_only_the_trials_at_full_budget(tmp_path: Path) -> None:
    import optuna

    db = tmp_path / "optuna.db"
    study = optuna.create_study(study_name="r-a", storage=f"sqlite:///{db}", direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    for i in range(8):
        t = study.ask()
        v = t.suggest_float("lr", 0, 1) + 0.1 * t.suggest_int("blocks", 1, 3)
        study.tell(t, v if i % 3 else None, state=optuna.trial.TrialState.COMPLETE if i % 3 else
                   optuna.trial.TrialState.PRUNED)  # trials 0, 3, 6: stopped by ASHA
    said, charts = study_charts(db, "r-a", "val_auc")
    assert said.startswith("Optuna's charts below use 5 of 8 trials (those not stopped by ASHA")
    assert [name for name, _ in charts] == ["optimization history", "parallel coordinates", "parameter importances"]
    history = charts[0][1]
    assert len(history.data[0].x) == 5  # the pruned trials are not drawn
    assert len(optuna.load_study(study_name="r-a", storage=f"sqlite:///{db}").trials) == 8  # the run's untouched
    # a search from before ASHA-stopped trials were recorded as PRUNED: the page says the charts mix budgets
    said, _ = study_charts(db, "r-a", "val_auc", asha_stopped=5)
    assert "recorded the 5 trials ASHA stopped as COMPLETE too" in said and "same budget" not in said

    small = optuna.create_study(study_name="r-b", storage=f"sqlite:///{db}")
    small.tell(small.ask(), 0.5)
    small.tell(small.ask(), None, state=optuna.trial.TrialState.PRUNED)
    said, charts = study_charts(db, "r-b", "val_auc")
    assert charts == [] and "1 of 2 trials ran at the full budget" in said and "too few to chart" in said
    said, charts = study_charts(db, "r-missing", "val_auc")
    assert charts == [] and "No Optuna study r-missing" in said


def test_evaluation_tables(finalized: Path, tmp_path: Path) -> None:
    run = tmp_path / "tiny"
    shutil.copytree(finalized, run)
    cmp = json.loads((run / "comparison.json").read_text())
    iv = {"value": 0.91, "low": 0.85, "high": 0.96}
    both = {m: iv for m in ("accuracy", "precision", "recall", "f1")}
    cmp["evaluation"] = {
        "bootstrap": {"resamples": 1000, "seed": 0, "stratified": True, "level": 0.95},
        "models": [{"name": "custom_cnn"}], "sources": [{"name": "gen_a"}, {"name": "only_fakes"}],
        "conditions": [{"name": "clean"}, {"name": "jpeg=75"}],
        "rows": [{"model": "custom_cnn", "source": "gen_a", "condition": "clean", "n_fake": 50, "n_real": 50,
                  "auc": iv, "ap": iv, "eer": iv, "at_threshold": both, "at_0.5": both, "note": ""},
                 {"model": "custom_cnn", "source": "only_fakes", "condition": "clean", "n_fake": 20, "n_real": 0,
                  "auc": None, "ap": None, "eer": None, "at_threshold": both, "at_0.5": both,
                  "note": "only Fake images: AUC, AP and EER undefined"},
                 {"model": "custom_cnn", "source": "mean", "condition": "jpeg=75", "n_fake": 70, "n_real": 50,
                  "auc": {"value": 0.7, "low": 0.6, "high": 0.8}, "ap": iv, "eer": iv, "at_threshold": both,
                  "at_0.5": both, "note": ""}],
        "paired": [{"source": "overall", "condition": "clean", "a": "custom_cnn", "b": "mobilenet_v2",
                    "metric": "auc", "difference": 0.03, "p_value": 0.04, "significant": True}],
        "plots": {}}
    (run / "comparison.json").write_text(json.dumps(cmp))
    html = build_html(run, log=lambda s: None)
    section = html.split('id="evaluation"')[1].split("</section>")[0]
    assert "Per source (clean images)" in section and "Robustness: jpeg=75" in section
    # (an old evaluation.json's cells, each printed as its value over its interval: the table stays narrow)
    assert "0.910<br><small>[0.850, 0.960]</small>" in section and "0.700<br><small>[0.600, 0.800]" in section
    assert "n/a" in section and "only Fake images" in section and "+0.030" in section
    assert "extra test sets" not in html and "extra test sets" in (finalized / "report.html").read_text()
