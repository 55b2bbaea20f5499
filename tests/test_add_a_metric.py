"""Adding a metric is one entry in tune.metrics.classification.METRICS: the search may select by it, the
leaderboard ranks by it, finalize's comparison, evaluate's tables and the report all show it.

The entry is registered by a `sitecustomize.py` on the commands' PYTHONPATH, so every process of the real
commands, Ray's trial workers included, has it before any tune module is imported: exactly what adding the
entry to the source does, without editing the source in a test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_dataset
from procs import ROOT, kill_marked, marked_env, run, tune_cmd

pytestmark = pytest.mark.slow

PLUGIN = '''
from tune.metrics.classification import METRICS, Metric, _div

METRICS["specificity"] = Metric("specificity", "max", "Specificity", from_counts=lambda c: _div(c.tn, c.tn + c.fp))
'''
SPACE = """
metric: val_specificity
mode: max
seed: 0
image_size: 32
budget: {trials: 2, max_epochs: 2, grace_period: 1, reduction_factor: 2, patience: 3}
resources: {cpus_per_trial: 1}
fixed: {batch_size: 16}
architectures:
  custom_cnn:
    lr: {type: loguniform, low: 1.0e-3, high: 1.0e-2}
    conv_blocks: 1
    base_width: 4
"""


def test_a_new_metric_is_one_entry_and_shows_everywhere(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", n=8, size=32)
    (tmp_path / "plugin").mkdir()
    (tmp_path / "plugin" / "sitecustomize.py").write_text(PLUGIN)
    (tmp_path / "s.yaml").write_text(SPACE)
    env, mark = marked_env(PYTHONPATH=f"{tmp_path / 'plugin'}:{ROOT}", TUNE_CACHE_DIR=str(tmp_path / "cache"))
    results = tmp_path / "results"
    try:
        steps = [["search", "--data", str(data), "--space", str(tmp_path / "s.yaml"), "--name", "m",
                  "--storage", str(results), "--seeds", "1"],
                 ["leaderboard", "m", "--storage", str(results), "--format", "json"],
                 ["evaluate", "--run", "m", "--storage", str(results), str(data / "test"), "--out",
                  str(tmp_path / "eval")]]
        out = []
        for args in steps:
            res = run(tune_cmd(*args), env, timeout=600)
            assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
            out.append(res.stdout)
    finally:
        kill_marked(mark)
    board = json.loads(out[1])
    assert board and all("best_val_specificity" in r for r in board)  # ranked by it, its trials scored by it
    run_dir = results / "m"
    cmp = json.loads((run_dir / "comparison.json").read_text())
    assert all("specificity" in r[rule] for r in cmp["rows"] for rule in cmp["threshold_rules"])
    assert "Specificity" in (run_dir / "comparison.md").read_text()
    assert ",specificity," in (run_dir / "comparison.csv").read_text()
    ev = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert all("specificity" in r["at_0.5"] for r in ev["rows"])
    assert "Specificity" in (tmp_path / "eval" / "evaluation.md").read_text()
    assert "Specificity" in (run_dir / "report.html").read_text()
    history = (run_dir / "finalize" / "custom_cnn" / "seed0" / "history.csv").read_text()
    assert "val_specificity" in history.splitlines()[0]
