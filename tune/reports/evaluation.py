"""What `evaluate` renders: evaluation.{md,csv}, scores.csv and plots/*.png in one folder.

Every file is written atomically; evaluation.json (written after them, by tune/cli/evaluate.py) marks a
complete evaluation. Figures use matplotlib's object API on the Agg canvas (as tune/reports/figures.py); a plot
that fails is logged and skipped, because its numbers are in evaluation.json.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sklearn.metrics import roc_curve

from tune.core import atomic_write_text
from tune.reports.figures import note, save
from tune.reports.tables import Table, evaluation_csv, evaluation_table, label, paired_table
from tune.runs.evaluation import MEAN
from tune.runs.files import Evaluation

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from tune.data.sources import Scored

def render_markdown(ev: Evaluation, *, level: int = 1, title: str = "Evaluation") -> str:
    h = "#" * level
    b = ev.bootstrap
    lines = [f"{h} {title}", "", "Models:"]
    for m in ev.models:
        lines.append(f"- `{m.name}`: {m.arch} at {m.image_size} px, threshold {m.threshold:.3f} "
                     f"({m.threshold_rule}); {m.path} (sha256 {(m.sha256 or '?')[:12]})")
    lines += ["", "Sources:"]
    for s in ev.sources:
        skipped = f", {len(s.skipped)} unreadable image(s) skipped" if s.skipped else ""
        lines.append(f"- `{s.name}`: {s.n_fake} fake / {s.n_real} real ({s.path}{skipped})")
    lines += ["", f"Cells: value on all images [{b.confidence:.0%} stratified bootstrap interval, {b.resamples} "
              "resamples]. At valid: at the model's threshold chosen on valid; at 0.5: at 0.5. The mean row "
              "averages the sources (each source weighs the same)."]
    if ev.frames:
        lines += ["", "Videos count as one row each: a video's P(fake) is its sampled frames' P(fake) aggregated by "
                  "the model's video_agg; the same tables per frame follow (Per frame)."]
    for cond in ev.conditions:
        lines += ["", f"{h}# {cond.name}", "", evaluation_table(ev, cond.name).markdown()]
    if len(ev.conditions) > 1:
        names = [c.name for c in ev.conditions]
        rows = []
        for m in ev.models:
            by = {r.condition: r for r in ev.rows if r.model == m.name and r.source == MEAN}
            rows.append([m.name, *(by[n].cell("auc").text() for n in names)])
        lines += ["", f"{h}# Robustness: mean {label('auc')} over sources", "",
                  Table(["Model", *names], rows).markdown()]
    if ev.paired:
        lines += ["", f"{h}# Paired bootstrap (same resamples for both models; two-sided p, not corrected for "
                  "multiple comparisons)", "", paired_table(ev).markdown()]
    if ev.frames:  # sources with videos: the rows above are videos; here, the same of their frames
        lines += ["", render_markdown(ev.frames, level=level + 1,
                                      title="Per frame (each sampled frame of the videos scored alone)")]
    if ev.plots:
        lines.append("")
        lines += [f"![{name}]({path})" for name, path in ev.plots.items()]
    return "\n".join(lines) + "\n"


def render_csv(ev: Evaluation) -> str:
    """One line per cell (model, source, condition, rule, metric): every value with its interval."""
    return evaluation_csv(ev)


def scores_csv(scored: dict[str, Scored]) -> str:
    """Every image's P(fake) per model and condition: the numbers behind every cell."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model", "source", "condition", "path", "label", "p_fake"])
    for source, sc in scored.items():
        for (model, cond), p in sc.p.items():
            w.writerows((model, source, cond, path, int(y), repr(float(q))) for path, y, q in zip(sc.paths, sc.y, p))
    return buf.getvalue()


# --------------------------------------------------------------------------- plots
def _save(fig: Figure, path: Path) -> None:
    save(fig, path)


def plot_auc_by_source(ev: Evaluation, path: Path) -> None:
    from matplotlib.figure import Figure  # heavy: matplotlib only when a figure is drawn

    cond = ev.conditions[0].name
    sources = [s.name for s in ev.sources] + [MEAN]
    models = [m.name for m in ev.models]
    fig = Figure(figsize=(max(5.0, 1.2 * len(sources) * max(1, len(models)) ** 0.5 + 2), 4))
    ax = fig.add_subplot()
    width = 0.8 / len(models)
    for i, m in enumerate(models):
        by = {source: r.cell("auc") for source, r in ev.by_source(m, cond).items()}
        xs = np.arange(len(sources)) + (i - (len(models) - 1) / 2) * width
        vals = [by[s].value if by[s].value is not None else np.nan for s in sources]
        err = [[v - (by[s].low if by[s].low is not None else v) for v, s in zip(vals, sources)],
               [(by[s].high if by[s].high is not None else v) - v for v, s in zip(vals, sources)]]
        ax.bar(xs, vals, width, yerr=err, capsize=3, color=f"C{i}", label=m)
        for x, v in zip(xs, vals):
            if np.isnan(v):
                ax.text(x, 0.02, "undefined", rotation=90, ha="center", va="bottom", fontsize=8)
    ax.axhline(0.5, color="gray", lw=0.8, ls="--")
    ax.set_xticks(np.arange(len(sources)), sources, rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"ROC-AUC ({cond}), {ev.bootstrap.confidence:.0%} bootstrap interval")
    ax.set_title("AUC per source")
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_roc_by_source(ev: Evaluation, scored: dict[str, Scored], path: Path) -> None:
    from matplotlib.figure import Figure  # heavy: matplotlib only when a figure is drawn

    cond = ev.conditions[0].name
    names = [s.name for s in ev.sources]
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(4 * cols, 3.8 * rows))
    for k, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, k + 1)
        sc = scored[name]
        ax.set_title(name)
        if len(set(sc.y.tolist())) < 2:
            note(ax, "one class only:\nROC undefined")
            continue
        for i, m in enumerate(ev.models):
            fpr, tpr, _ = roc_curve(sc.y, sc.p[m.name, cond])
            auc = ev.by_source(m.name, cond)[name].cell("auc").value
            ax.plot(fpr, tpr, color=f"C{i}", label=f"{m.name} (AUC {auc:.3f})")
        ax.plot([0, 1], [0, 1], color="gray", lw=0.8, ls="--")
        ax.set_xlabel("false-positive rate")
        ax.set_ylabel("true-positive rate")
        ax.legend(fontsize=7, loc="lower right")
    _save(fig, path)


def plot_auc_vs_severity(ev: Evaluation, path: Path) -> None:
    from matplotlib.figure import Figure  # heavy: matplotlib only when a figure is drawn

    kinds = list(dict.fromkeys(c.perturbation for c in ev.conditions if c.perturbation))
    fig = Figure(figsize=(4.5 * len(kinds), 3.8))
    for k, kind in enumerate(kinds):
        ax = fig.add_subplot(1, len(kinds), k + 1)
        conds = [ev.conditions[0]] + [c for c in ev.conditions if c.perturbation == kind]
        labels = ["clean"] + [f"{c.severity:g}" for c in conds[1:]]
        for i, m in enumerate(ev.models):
            by = {r.condition: r.cell("auc") for r in ev.rows if r.model == m.name and r.source == MEAN}
            cells = [by[c.name] for c in conds]
            vals = [c.value if c.value is not None else float("nan") for c in cells]
            err = [[v - c.low if c.low is not None else 0 for v, c in zip(vals, cells)],
                   [c.high - v if c.high is not None else 0 for v, c in zip(vals, cells)]]
            shift = (i - (len(ev.models) - 1) / 2) * 0.06  # side by side, so the intervals stay readable
            ax.errorbar([j + shift for j in range(len(conds))], vals, yerr=err, marker="o", capsize=3, color=f"C{i}",
                        label=m.name)
        ax.set_xticks(range(len(conds)), labels)
        ax.set_xlabel({"jpeg": "JPEG quality", "blur": "blur sigma (px)", "resize": "scale factor"}.get(kind, kind))
        ax.set_ylabel("mean AUC over sources")
        ax.set_ylim(0, 1.05)
        ax.axhline(0.5, color="gray", lw=0.8, ls="--")
        ax.set_title(f"AUC vs {kind}")
        ax.legend(fontsize=8)
    _save(fig, path)


def make_plots(out: Path, ev: Evaluation, scored: dict[str, Scored], log: Callable[[str], None],
               extra: dict[str, Callable[[Path], None]] | None = None) -> dict[str, str]:
    jobs: dict[str, Callable[[Path], None]] = {
        "auc_by_source": lambda p: plot_auc_by_source(ev, p),
        "roc_by_source": lambda p: plot_roc_by_source(ev, scored, p)}
    if len(ev.conditions) > 1:
        jobs["auc_vs_severity"] = lambda p: plot_auc_vs_severity(ev, p)
    jobs |= extra or {}
    done = {}
    for name, job in jobs.items():
        try:
            job(out / "plots" / f"{name}.png")
            done[name] = f"plots/{name}.png"
        except Exception as e:  # noqa: BLE001 - a plot is a view of numbers already saved
            log(f"warning: plot {name} failed: {type(e).__name__}: {e}")
    return done


def write_outputs(out: Path, ev: Evaluation, scored: dict[str, Scored], *, log: Callable[[str], None] = print,
                  extra_plots: dict[str, Callable[[Path], None]] | None = None) -> None:
    """Plots (`extra_plots`: more NAME -> draw(path) jobs, e.g. evaluate's Grad-CAM panels; each one drawn is
    recorded in ev.plots), scores.csv, evaluation.csv and .md. evaluation.json comes after, from the caller
    (tune/cli/evaluate.py): its presence marks the folder complete."""
    out = Path(out)
    ev.plots = make_plots(out, ev, scored, log, extra_plots)
    atomic_write_text(out / "scores.csv", scores_csv(scored))
    atomic_write_text(out / "evaluation.csv", render_csv(ev))
    atomic_write_text(out / "evaluation.md", render_markdown(ev))
