"""The report's "Accuracy against latency" section: every finished trial's valid score against its measured
latency (ms per image at batch 1, tune/training/latency.py), one colour per architecture, the Pareto front
(tune/runs/pareto.py) drawn as a step line, each architecture's winner ringed and the picked model (finalize
--pick) starred; then Optuna's own Pareto-front plot of each multi-objective study."""

from __future__ import annotations

import warnings
from html import escape
from typing import TYPE_CHECKING, Any

from tune.reports.charts import figure_div, load_study
from tune.reports.figures import color as arch_color
from tune.runs.pareto import FINISHED, SPEED

if TYPE_CHECKING:
    from tune.reports.sections import Context


def figure(board: Any, metric: str, mode: str, picked: str | None) -> Any:
    import plotly.graph_objects as go  # heavy: plotly and matplotlib only when a chart is drawn
    from matplotlib.colors import to_hex

    done = board[board["ended"].isin(FINISHED) & board["score"].notna() & board[SPEED].notna()]
    fig = go.Figure()
    for arch, group in done.groupby("arch", sort=False):
        color = to_hex(arch_color(str(arch)))  # the colour every plot gives it
        text = [f"{arch} trial {n} ({t})" for n, t in zip(group["trial_no"], group["trial_id"])]
        fig.add_trace(go.Scatter(x=group[SPEED], y=group["score"], mode="markers", name=str(arch), text=text,
                                 marker={"color": color, "size": 9, "opacity": 0.8},
                                 hovertemplate="%{text}<br>%{x:.3g} ms/image<br>" + metric + " %{y:.4f}"))
        best = group.sort_values("score", ascending=(mode == "min"), kind="stable").iloc[0]
        fig.add_trace(go.Scatter(x=[best[SPEED]], y=[best["score"]], mode="markers", showlegend=False,
                                 name=f"{arch} winner", hoverinfo="skip",
                                 marker={"size": 18, "color": "rgba(0,0,0,0)", "line": {"color": color, "width": 2}}))
    front = done[done["pareto"].astype(bool)].sort_values(SPEED) if "pareto" in done else done.iloc[:0]
    if len(front):
        fig.add_trace(go.Scatter(x=front[SPEED], y=front["score"], mode="lines", name="Pareto front",
                                 line={"shape": "hv", "color": "#333", "dash": "dot"}, hoverinfo="skip"))
    if picked:
        row = board[(board["trial_id"] == picked) & board["score"].notna() & board[SPEED].notna()]  # finished or not
        if len(row):
            fig.add_trace(go.Scatter(x=row[SPEED], y=row["score"], mode="markers", name="picked (finalize --pick)",
                                     marker={"symbol": "star", "size": 16, "color": "#d62728"}, hoverinfo="skip"))
    fig.update_layout(title=f"valid {metric} against latency", xaxis_title="ms per image at batch 1 (log)",
                      yaxis_title=f"best {metric}", xaxis_type="log")
    return fig


def optuna_fronts(ctx: Context) -> list[tuple[str, Any]]:
    """Optuna's plot_pareto_front of each study with two objectives (COMPLETE trials only); a sentence instead of
    the figure when a study cannot be drawn."""
    import optuna  # heavy: optuna only when a report reads a study
    import optuna.visualization as vis

    names = [n for n, _ in ctx.meta.space.get("objectives") or ()]
    out = []
    for arch in ctx.meta.architectures:
        study = load_study(ctx.run.optuna_db, ctx.run.study_name(arch, ctx.meta))
        if study is None or len(study.directions) != 2:
            continue  # a single-objective study: our own figure above is the picture
        if sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False)) < 1:
            out.append((arch, "no trial of this study is COMPLETE yet: Optuna's Pareto front has nothing to draw"))
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            out.append((arch, vis.plot_pareto_front(study, target_names=names or None)))
    return out


def section(ctx: Context) -> str:
    board = ctx.board
    if board.empty or SPEED not in board or board[SPEED].isna().all():
        return ("<p>No trial measured its latency (a search from before serving costs were measured): nothing "
                "to plot.</p>")
    picked = (ctx.meta.pick or {}).get("trial_id")
    n_front = int(board["pareto"].sum()) if "pareto" in board else 0
    said = (f"<p>Each finished trial's valid {escape(ctx.metric)} against the median milliseconds per image its "
            f"kept model took at batch 1 on the machine that ran it. {n_front} trial(s) on the Pareto front (no "
            "other finished trial is both as accurate and as fast); a ring marks each architecture's winner"
            + ("; the star, the model finalize --pick shipped" if picked else "") + ".</p>")
    fig = figure(board, ctx.metric, ctx.meta.mode, picked)
    parts = [said, f'<div class="chart">{figure_div(fig, "accuracy-latency")}</div>']  # not "pareto": the section's id
    for arch, fig in optuna_fronts(ctx):
        parts.append(f"<h3>{escape(arch)}: Optuna's Pareto front</h3>" + (
            f"<p>{escape(fig)}</p>" if isinstance(fig, str) else
            f'<div class="chart">{figure_div(fig, f"{arch}-optuna-pareto")}</div>'))
    return "".join(parts)
