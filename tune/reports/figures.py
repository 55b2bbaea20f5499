"""What finalize shows beside its tables (tune/reports/tables.py): the run's pictures (PNGs in plots/).

Figures are built with matplotlib's object API on the Agg canvas, never pyplot: no global
backend switch, no figures left open, safe in a headless worker. One failing plot is logged
and skipped, because the numbers it would show are already saved in comparison.json.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score, roc_curve

from tune.core import UserError, atomic_write_bytes
from tune.data.images import split_counts
from tune.metrics.classification import binary_metrics
from tune.models.registry import get_arch
from tune.runs.comparison import ModelRow
from tune.runs.files import Comparison
from tune.runs.layout import Run, RunRecord
from tune.runs.leaderboard import load_leaderboard
from tune.training.records import HISTORY, PREDICTIONS, read_predictions

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

STATUS_COLORS = {"completed": "tab:green", "early_stopped": "tab:blue", "stopped_by_asha": "tab:gray",
                 "diverged": "tab:red", "errored": "tab:red"}
MIN_IMPORTANCE_TRIALS = 4  # fANOVA on fewer finished trials is noise; say so instead of drawing it


def color(arch: str) -> str:
    try:
        return get_arch(arch).color
    except UserError:  # a run made with an architecture this version no longer has
        return "tab:purple"


def new_figure(**kwargs: Any) -> Figure:
    from matplotlib.figure import Figure  # matplotlib: heavy, imported when a figure is drawn, not by every command

    return Figure(**kwargs)


def save(fig: Figure, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return path


def note(ax: Axes, text: str) -> None:
    """A plot that cannot be drawn says why, in the plot itself."""
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, transform=ax.transAxes, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])


# --------------------------------------------------------------------------- data and the winners
def plot_dataset(run: RunRecord) -> Figure:
    counts = split_counts(Path(run.data.root))
    fig = new_figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    splits = list(counts)
    x = np.arange(len(splits))
    for i, cls in enumerate(("Real", "Fake")):
        bars = ax.bar(x + (i - 0.5) * 0.38, [counts[s][cls] for s in splits], 0.38, label=cls,
                      color="tab:green" if cls == "Real" else "tab:red")
        ax.bar_label(bars, fontsize=8)
    ax.set_xticks(x, splits)
    ax.set(xlabel="split", ylabel="images", title="Dataset: images per split and class")
    ax.set_ylim(0, max(max(c.values()) for c in counts.values()) * 1.25)  # room for the legend
    ax.legend(loc="upper center", ncols=2)
    return fig


def winners(run_dir: Path, cmp: Comparison) -> list[tuple[ModelRow, Path]]:
    """(comparison row, folder of its chosen seed) for every finalized model, tuned ones first."""
    rows = sorted(cmp.rows, key=lambda r: r.kind != "tuned")
    return [(r, Run(run_dir).finalize(r.name, r.chosen_seed)) for r in rows]


def plot_learning_curves(run_dir: Path, cmp: Comparison) -> Figure:
    fig = new_figure(figsize=(13, 4), layout="constrained")
    axes = fig.subplots(1, 3)
    for row, folder in winners(run_dir, cmp):
        if row.kind != "tuned":
            continue
        h = pd.read_csv(folder / HISTORY)
        c, name = color(row.arch), f"{row.arch} (seed {row.chosen_seed})"
        axes[0].plot(h["epoch"], h["train_loss"], "-o", color=c, ms=3, label=f"{name} train")
        axes[0].plot(h["epoch"], h["val_loss"], "--o", color=c, ms=3, label=f"{name} valid")
        axes[1].plot(h["epoch"], h["val_accuracy"], "-o", color=c, ms=3, label=name)
        axes[2].plot(h["epoch"], h["val_auc"], "-o", color=c, ms=3, label=name)
    for ax, (what, title) in zip(axes, [("BCE loss", "Loss"), ("validation accuracy", "Validation accuracy"),
                                        ("validation ROC-AUC", "Validation AUC")]):
        ax.set(xlabel="epoch", ylabel=what, title=f"{title} of the retrained winners")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=7)
    return fig


def _predictions(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    _, y, p = read_predictions(folder / PREDICTIONS)
    return y, p


def plot_roc(run_dir: Path, cmp: Comparison) -> Figure:
    fig = new_figure(figsize=(5.5, 5), layout="constrained")
    ax = fig.subplots()
    for row, folder in winners(run_dir, cmp):
        y, p = _predictions(folder)
        fpr, tpr, _ = roc_curve(y, p)
        style = "-" if row.kind == "tuned" else ":"
        ax.plot(fpr, tpr, style, color=color(row.arch), lw=2,
                label=f"{row.name} seed {row.chosen_seed} (AUC {roc_auc_score(y, p):.3f})")
    ax.plot([0, 1], [0, 1], color="lightgray", lw=1, label="chance")
    ax.set(xlabel="false positive rate (Real called Fake)", ylabel="true positive rate (Fake caught)",
           title="ROC on the test split", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    return fig


def plot_confusion(run_dir: Path, cmp: Comparison) -> Figure:
    tuned = [(r, f) for r, f in winners(run_dir, cmp) if r.kind == "tuned"]
    fig = new_figure(figsize=(4.2 * len(tuned), 4), layout="constrained")
    for ax, (row, folder) in zip(np.atleast_1d(fig.subplots(1, len(tuned))), tuned):
        y, p = _predictions(folder)
        m = binary_metrics(y, p, row.chosen_threshold)
        cells = np.array([[m["tn"], m["fp"]], [m["fn"], m["tp"]]])  # rows: true Real, Fake
        ax.imshow(cells, cmap="Blues", vmin=0)
        for (i, j), v in np.ndenumerate(cells):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=14,
                    color="white" if v > cells.max() / 2 else "black")
        ax.set_xticks([0, 1], ["Real", "Fake"])
        ax.set_yticks([0, 1], ["Real", "Fake"])
        ax.set(xlabel="predicted", ylabel="true",
               title=f"{row.arch} seed {row.chosen_seed}\n(test, threshold {row.chosen_threshold:.3f} "
                     "chosen on valid)")
    return fig


# --------------------------------------------------------------------------- the search
def trials_in_order(arch: str, board: Any) -> Any:
    """This architecture's leaderboard rows in the order the trials started (the leaderboard's trial_no)."""
    rows = board[board["arch"] == arch]
    return rows.sort_values("trial_no", kind="stable").reset_index(drop=True)


def plot_search_metric(run_dir: Path, run: RunRecord, board: Any) -> Figure:
    space = run.space
    fig = new_figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    pick = np.fmax.accumulate if space["mode"] == "max" else np.fmin.accumulate
    for arch in space["architectures"]:
        rows = trials_in_order(arch, board)
        if rows.empty:
            continue
        n = np.arange(1, len(rows) + 1)
        scores = rows["score"].to_numpy(dtype=float)
        ax.plot(n, scores, "o", color=color(arch), alpha=0.6, label=f"{arch} trial")
        ax.step(n, pick(np.nan_to_num(scores, nan=-np.inf if space["mode"] == "max" else np.inf)), where="post",
                color=color(arch), label=f"{arch} best so far")
    ax.set(xlabel="trial (order started)", ylabel=f"best {space['metric']} of the trial",
           title=f"Search progress ({space['metric']}, {space['mode']})")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    return fig


def plot_search_epochs(run_dir: Path, run: RunRecord, board: Any) -> Figure:
    space, budget = run.space, run.space["budget"]
    archs = list(space["architectures"])
    fig = new_figure(figsize=(7, 3 * len(archs)), layout="constrained")
    rungs = [budget["grace_period"] * budget["reduction_factor"] ** k for k in range(32)
             if budget["grace_period"] * budget["reduction_factor"] ** k < budget["max_epochs"]]
    for ax, arch in zip(np.atleast_1d(fig.subplots(len(archs), 1, squeeze=False)[:, 0]), archs):
        rows = trials_in_order(arch, board)
        ax.bar(np.arange(1, len(rows) + 1), rows["epochs"], color=[STATUS_COLORS.get(s, "tab:olive")
                                                                   for s in rows["ended"]])
        for r in rungs:
            ax.axhline(r, color="black", ls=":", lw=1)
        ax.axhline(budget["max_epochs"], color="black", lw=1)
        from matplotlib.lines import Line2D  # matplotlib: heavy, as in new_figure
        from matplotlib.patches import Patch

        handles = [Patch(color=STATUS_COLORS.get(s, "tab:olive"), label=s) for s in dict.fromkeys(rows["ended"])]
        handles += [Line2D([], [], color="black", ls=":", lw=1, label=f"ASHA rungs {rungs}"),
                    Line2D([], [], color="black", lw=1, label=f"max epochs {budget['max_epochs']}")]
        ax.set(xlabel="trial (order started)", ylabel="epochs run", ylim=(0, budget["max_epochs"] * 1.3),
               title=f"{arch}: epochs per trial (ASHA stops the weak ones at its rungs)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(handles=handles, fontsize=8, loc="upper left", ncols=min(len(handles), 3))
    return fig


def plot_importance(run_dir: Path, run: RunRecord) -> Figure:
    """fANOVA on the trials that reached the same budget: Optuna's COMPLETE ones (ran to the end or
    early-stopped on patience). Trials ASHA stopped are PRUNED there (tune.search.searcher) and left out:
    a 2-epoch score explains nothing about what a hyperparameter does at 10 epochs."""
    import optuna  # heavy: optuna only when a report reads a study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    archs = list(run.space["architectures"])
    fig = new_figure(figsize=(6.5, 3 * len(archs)), layout="constrained")
    folder = Run(run_dir)
    for ax, arch in zip(fig.subplots(len(archs), 1, squeeze=False)[:, 0], archs):
        ax.set_title(f"{arch}: hyperparameter importance (fANOVA on the Optuna study)")
        try:
            problem = folder.optuna_problem()  # missing or unreadable: said, and nothing is created
            if problem:
                note(ax, f"importance not available: {problem}")
                continue
            study = optuna.load_study(study_name=folder.study_name(arch, run), storage=folder.optuna_url)
            done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
            pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
            if len(done) < MIN_IMPORTANCE_TRIALS:
                note(ax, f"{len(done)} finished trial(s): too few to estimate importance "
                         f"(needs {MIN_IMPORTANCE_TRIALS}+; {pruned} stopped early by ASHA are not counted)")
                continue
            imp = optuna.importance.get_param_importances(  # uses COMPLETE trials only
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
                target=(lambda t: t.values[0]) if len(study.directions) > 1 else None)  # the score
        except (KeyError, ValueError, RuntimeError) as e:  # missing study, constant params, ...
            note(ax, f"importance not available: {str(e)[:120]}")
            continue
        if not imp:
            note(ax, "no sampled hyperparameters varied")
            continue
        ax.set_title(f"{arch}: hyperparameter importance (fANOVA on the {len(done)} trials that ran their full "
                     f"course;\n{pruned} stopped early by ASHA left out)", fontsize=10)
        names = list(imp)[::-1]  # most important on top
        ax.barh(names, [imp[n] for n in names], color=color(arch))
        ax.set(xlabel="share of the metric's variance explained", xlim=(0, 1))
    return fig


# --------------------------------------------------------------------------- all of them
def make_plots(run_dir: Path, *, log: Callable[[str], None] = print) -> list[Path]:
    """Every plot the run's files allow; the winners' plots need finalize's comparison.json."""
    folder = Run(Path(run_dir))
    run_dir = folder.path
    run = folder.read()
    board = load_leaderboard(run_dir)
    cmp_path = folder.comparison("json")
    cmp = Comparison.load(cmp_path) if cmp_path.is_file() else None
    jobs: dict[str, Callable[[], Figure]] = {
        "dataset": lambda: plot_dataset(run),
        "search_metric": lambda: plot_search_metric(run_dir, run, board),
        "search_epochs": lambda: plot_search_epochs(run_dir, run, board),
        "importance": lambda: plot_importance(run_dir, run),
    }
    if cmp is not None:
        jobs |= {"learning_curves": lambda: plot_learning_curves(run_dir, cmp),
                 "roc": lambda: plot_roc(run_dir, cmp), "confusion": lambda: plot_confusion(run_dir, cmp)}
    written = []
    for name, make in jobs.items():
        try:
            written.append(save(make(), folder.plot(name)))
        except Exception as e:  # noqa: BLE001 - a broken picture must not lose the finished numbers
            log(f"warning: plot {name} failed: {type(e).__name__}: {e}")
    return written
