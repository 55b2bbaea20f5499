"""The sections of the HTML report, each a function from the run's files to an HTML fragment.

Numbers are formatted by the same helpers as comparison.md (tune.reports.figures) and leaderboard.md
(4 significant digits), so a value reads the same in every file of the run. Every string that
comes from a file is escaped.
"""

from __future__ import annotations

import csv
import json
import math
import shlex
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from tune import FAKE
from tune.data.images import split_counts
from tune.evaluation.panels import GROUPS, PER_GROUP
from tune.metrics.classification import AT_HALF, HEADLINE
from tune.models.explain import METHOD
from tune.reports import figures as report
from tune.reports.charts import figure_div, figure_png, png_uri, study_charts
from tune.reports.figures import plot_search_epochs
from tune.reports.tables import (
    RANKING_METRICS,
    REPORT,
    Table,
    comparison_caption,
    cost_table,
    ensemble_lines,
    ensemble_table,
    evaluation_table,
    label,
    paired_table,
    picked_lines,
    rule_name,
    rule_table,
    verdict_lines,
    video_table,
)
from tune.runs.files import Comparison
from tune.runs.layout import Run, RunRecord
from tune.runs.leaderboard import trial_counts
from tune.training.records import PREDICTIONS


@dataclass
class Context:
    run: Run
    meta: RunRecord  # run.json
    cmp: Comparison | None  # comparison.json, None before finalize
    board: Any  # tune.runs.leaderboard.load_leaderboard's DataFrame

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def metric(self) -> str:
        return self.meta.metric


# --------------------------------------------------------------------------- small HTML helpers
def table(head: list[str], rows: list[list[str]], *, cls: str = "", num_cols: set[int] | None = None) -> str:
    """An HTML table in its own horizontal scroller; cells are already-escaped HTML."""
    num_cols = num_cols or set()
    ths = "".join(f'<th{" data-type=num" if i in num_cols else ""}>{h}</th>' for i, h in enumerate(head))
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" if not c.startswith("<td") else c for c in r) + "</tr>"
                   for r in rows)
    return f'<div class="scroll"><table class="{cls}"><thead><tr>{ths}</tr></thead><tbody>{body}</tbody></table></div>'


def image(uri: str, alt: str) -> str:
    return f'<figure><img src="{uri}" alt="{escape(alt)}"></figure>'


def png_of(run: Run, name: str, draw: Any) -> str:
    """plots/NAME.png as finalize saved it, else the same figure drawn now in memory."""
    path = run.plot(name)
    return png_uri(path.read_bytes()) if path.is_file() else png_uri(figure_png(draw()))


def cmd(*parts: str) -> str:
    return " ".join(shlex.quote(p) for p in parts)


# --------------------------------------------------------------------------- 1-2: the test results
def verdict(ctx: Context) -> str:
    cmp = ctx.cmp
    assert cmp is not None
    row = cmp.row(cmp.best["auc"].model)
    seeds = len(row.seeds)
    head = (f'<p class="headline">Best model by test {escape(label("auc"))}: <b>{escape(row.model)}</b>, '
            f'{escape(row.cell("auc").text())} on {cmp.n_test} test images ({seeds} seed(s)).</p>')
    said = verdict_lines(cmp)  # the skipped architectures, then the accuracy and the AUC lines
    lines = "".join(f"<li>{escape(ln)}</li>" for ln in said[:-2]) + "".join(
        f'<li class="{"sig" if (t := cmp.best[m].test) and t.significant else "ns"}">{escape(ln)}</li>'
        for m, ln in zip(HEADLINE, said[-2:])) + "".join(f"<li>{escape(ln)}</li>" for ln in picked_lines(cmp))
    table = Table(["Threshold", *(label(m) for m in REPORT)],
                  [[rule_name(rule), *(row.cell(m, rule).text() for m in REPORT)]
                   for rule in cmp.threshold_rules])
    return (head + f'<ul class="verdict">{lines}</ul>'
            + "<p>Its test metrics (mean ± t half-width over seeds [95% bootstrap interval]):</p>" + table.html())


def comparison(ctx: Context) -> str:
    cmp = ctx.cmp
    assert cmp is not None
    out = [f"<p>Run {escape(cmp.run)}: {cmp.n_test} test images, {cmp.seeds} seed(s) per "
           "model.</p>"]
    for rule, text in cmp.threshold_rules.items():
        out.append(f"<h3>At {escape(text)}</h3>" + rule_table(cmp.rows, rule, REPORT).html())
    out.append("<h3>Threshold-free</h3>" + rule_table(cmp.rows, AT_HALF, [m for m in RANKING_METRICS
                                                                           if m != "auc"]).html())
    out.append(f'<p class="note">{escape(comparison_caption(cmp))}</p>')
    costs = cost_table(cmp)
    if costs is not None:
        out.append("<h3>Costs</h3>" + costs.html())
    if cmp.ensembles is not None:  # comparison.json files from before ensembles have none
        out.append("<h3>Ensembles and flip TTA</h3>" + ensemble_table(cmp).html())
        out.append('<ul class="ensembles">' + "".join(f"<li>{escape(ln)}</li>" for ln in ensemble_lines(cmp)) + "</ul>")
    if cmp.video:
        out.append(f"<h3>Per video ({cmp.video.n_videos} test videos)</h3>" + video_table(cmp).html())
    if cmp.evaluation is None:
        out.append('<p class="note">No per-source or robustness tables: this run was finalized without extra test '
                   "sets.</p>")
    return "".join(out)


def curves(ctx: Context) -> str:
    cmp, d = ctx.cmp, ctx.run.path
    assert cmp is not None
    return "".join(image(png_of(ctx.run, name, lambda f=f: f(d, cmp)), alt) for name, f, alt in (
        ("roc", report.plot_roc, "ROC curves on the test split"),
        ("confusion", report.plot_confusion, "confusion matrices at the valid-chosen threshold"),
        ("learning_curves", report.plot_learning_curves, "learning curves of the retrained winners")))


def explanations(ctx: Context) -> str:
    cmp = ctx.cmp
    assert cmp is not None
    out = [f"<p>{escape(METHOD)}: warm colours mark where the model's features raise P(fake), over the image as the "
           f"model saw it. Up to {PER_GROUP} test images per group, chosen by rule (not by hand): "
           f"{escape('; '.join(GROUPS))}.</p>"]
    for row in cmp.tuned:
        path = ctx.run.cam_panel(row.arch)
        out.append(image(png_uri(path.read_bytes()), f"Grad-CAM panel of {row.arch} on the test split")
                   if path.is_file() else
                   f'<p class="note">No panel for {escape(row.arch)}: finalize did not draw one (see its log; '
                   f"<code>python -m tune finalize {escape(ctx.name)}</code> draws it).</p>")
    return "".join(out)


# --------------------------------------------------------------------------- 4: evaluation.json (shared contract)
def evaluation(ctx: Context) -> str:
    assert ctx.cmp is not None and ctx.cmp.evaluation is not None
    ev = ctx.cmp.evaluation
    b = ev.bootstrap
    out = [f"<p>Cells: value [{b.confidence:.0%} bootstrap interval: {b.resamples} resamples"
           f"{', stratified by class' if b.stratified else ''}]. At valid: each model's threshold chosen on "
           "valid.</p>"]
    for cond in ev.conditions:
        title = "Per source (clean images)" if cond.name == "clean" else f"Robustness: {cond.name}"
        out.append(f"<h3>{escape(title)}</h3>" + evaluation_table(ev, cond.name).html())
    if ev.paired:
        out.append("<h3>Paired differences</h3>" + paired_table(ev).html())
    for name, rel in (ev.plots or {}).items():
        path = ctx.run.path / rel
        if path.is_file() and path.suffix.lower() == ".png":
            out.append(image(png_uri(path.read_bytes()), name.replace("_", " ")))
    return "".join(out)


# --------------------------------------------------------------------------- 5-7: the search
def _shown_value(v: Any) -> tuple[str, str]:
    """(shown text, sort key) of a leaderboard value, shown as in leaderboard.md (4 significant digits)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "", ""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return escape(str(v)), escape(str(v))
    return (f"{v:.4g}" if isinstance(v, float) else str(v)), repr(float(v))


def leaderboard(ctx: Context) -> str:
    board = ctx.board
    if board.empty:
        return "<p>No trial has reported yet.</p>"
    counts = ", ".join(f"{n} {escape(str(k))}" for k, n in board["ended"].value_counts().items())
    cols = [c for c in board.columns if board[c].notna().any()]
    shown = {"score": f"best {ctx.metric}"}
    numeric = {i for i, c in enumerate(cols) if board[c].dtype.kind in "if"}
    rows = []
    for rec in board[cols].to_dict("records"):
        cells = []
        for i, c in enumerate(cols):
            text, key = _shown_value(rec[c])
            cls = f' class="ended-{text}"' if c == "ended" else ""
            cells.append(f'<td data-v="{key}"{cls}>{text}</td>' if i in numeric else f"<td{cls}>{text}</td>")
        rows.append(cells)
    return (f"<p>{len(board)} trials: {counts}. Click a column's header to sort by it.</p>"
            + table([escape(shown.get(c, c)) for c in cols], rows, cls="sortable board", num_cols=numeric))


def search(ctx: Context) -> str:
    out = [f"<p>{escape(trial_counts(ctx.board))}.</p>"] if not ctx.board.empty else []
    for arch in ctx.meta.architectures:
        asha = 0 if ctx.board.empty else int(((ctx.board["arch"] == arch)
                                               & (ctx.board["ended"] == "stopped_by_asha")).sum())
        said, charts = study_charts(ctx.run.optuna_db, ctx.run.study_name(arch, ctx.meta), ctx.metric, asha)
        out.append(f"<h3>{escape(arch)}</h3><p>{escape(said)}</p>")
        out += [f'<div class="chart">{figure_div(fig, f"{arch}-{title}")}</div>' for title, fig in charts]
    return "".join(out)


def epochs(ctx: Context) -> str:
    if ctx.board.empty:
        return "<p>No trial has reported yet.</p>"
    fig = plot_search_epochs(ctx.run.path, ctx.meta, ctx.board)
    return image(png_uri(figure_png(fig)), "epochs per trial, coloured by how each trial ended")


# --------------------------------------------------------------------------- 8-9: data and reproduction
def _test_classes(ctx: Context) -> dict[str, int]:
    """Fake and Real among the test images finalize scored (the labels in its predictions.csv)."""
    row = ctx.cmp.rows[0] if ctx.cmp and ctx.cmp.rows else None
    if row is None:
        return {}
    with open(ctx.run.finalize(row.name, row.seeds[0]) / PREDICTIONS, newline="") as f:
        labels = [int(r["label"]) for r in csv.DictReader(f)]
    return {"Fake": labels.count(FAKE), "Real": len(labels) - labels.count(FAKE)}


def dataset(ctx: Context) -> str:
    data, cmp = ctx.meta.data, ctx.cmp
    root = Path(data.root)
    prints = {"train": data.train_fingerprint, "valid": data.valid_fingerprint,
              "test": cmp.test_fingerprint if cmp else None}
    counts, note = {**data.classes, "test": _test_classes(ctx)}, ""
    if not data.classes:  # a run from before run.json recorded them: count the files there now
        try:
            counts = {**split_counts(root, ("train", "valid")), "test": counts["test"]}
            note = f"<p class=note>Train and valid counted in {escape(str(root))} now.</p>"
        except Exception as e:  # noqa: BLE001 - the data may live on another machine now
            note = f"<p class=note>Could not count the images in {escape(str(root))} ({escape(str(e)[:160])}).</p>"
    rows = []
    for split, fp in prints.items():
        c = counts.get(split) or {}
        total = c["Fake"] + c["Real"] if c else getattr(data, f"n_{split}", "")
        rows.append([split, str(c.get("Fake", "")), str(c.get("Real", "")), str(total),
                     f"<code>{escape(fp)}</code>" if fp else "not read until finalize" if split == "test" else ""])
    skipped = len(data.skipped or [])
    weights = "".join(f"<li>{escape(a)}: {escape(str(w))}</li>" for a, w in ctx.meta.weights.items())
    return (f"<p>Dataset root <code>{escape(str(root))}</code>; {skipped} unreadable image(s) skipped. The "
            "fingerprints are content hashes: a different one means different data.</p>" + note
            + table(["Split", "Fake", "Real", "Total", "Fingerprint"], rows)
            + (f"<p>Pretrained weights:</p><ul>{weights}</ul>" if weights else ""))


def reproduce(ctx: Context) -> str:
    meta, cmp, space = ctx.meta, ctx.cmp, ctx.meta.space
    storage = str(ctx.run.path.parent.absolute())
    again = f"{ctx.name}-again"
    search = ["python", "-m", "tune", "search", "--data", str(meta.data.root), "--space",
              meta.space_file or "SPACE.yaml", "--name", again, "--trials", str(space["budget"]["trials"]),
              "--storage", storage, "--no-finalize"]
    search += ["--no-cache"] if not meta.use_cache else []
    search += ["--skip-bad-images"] if meta.data.skipped else []
    search += ["--valid-extra", *meta.data.valid_extra["dirs"]] if meta.data.valid_extra else []
    lines = ["# 1. the same search again, into a new run folder next to this one", cmd(*search)]
    if not ctx.board.empty:
        lines.append("# 2. re-train each architecture's best trial and check its numbers bit for bit")
        for arch in space["architectures"]:
            scored = ctx.board[(ctx.board["arch"] == arch) & ctx.board["score"].notna()]
            if len(scored):
                lines.append(cmd("python", "-m", "tune", "reproduce", ctx.name, "--trial",
                                 str(scored.iloc[0]["trial_id"]), "--storage", storage))
    if cmp is not None:
        fin = ["python", "-m", "tune", "finalize", again, "--seeds", str(cmp.seeds),
               "--storage", storage] + (["--baseline"] if any(r.kind == "baseline" for r in cmp.rows) else [])
        lines += ["# 3. retrain the winners with the same seeds and test them once (on the run of step 1)", cmd(*fin)]
    versions = "".join(f"<code>{escape(k)} {escape(str(v))}</code> " for k, v in sorted(
        meta.versions.items()))
    return (f"<pre>{escape(chr(10).join(lines))}</pre>"
            + f"<p>Search started {escape(meta.started or '?')}"
            + (f", resumed {escape(meta.resumed)}" if meta.resumed else "") + ". Library versions "
            f'recorded by the search:</p><p class="versions">{versions}</p>'
            + f"<details><summary>The search space as run (run.json)</summary><pre>"
              f"{escape(json.dumps(space, indent=2))}</pre></details>")
