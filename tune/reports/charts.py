"""The HTML report's pictures: Optuna's own plotly charts of each study, and images as data: URIs.

Optuna already draws the optimization history, the parallel coordinates and the parameter
importances (optuna.visualization); the report uses those figures as they are and only chooses
which trials go in. ASHA stops weak trials after fewer epochs, so their scores are not comparable
with those of trials that ran their full course: the charts use only the trials Optuna records as
COMPLETE (ran to max_epochs or stopped early on patience), copied into an in-memory study, because
every optuna.visualization function takes a Study, not a list of trials.
"""

from __future__ import annotations

import base64
import io
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tune.reports.figures import MIN_IMPORTANCE_TRIALS
from tune.runs.layout import Run

if TYPE_CHECKING:  # plotly, optuna and matplotlib load on use: `python -m tune --help` stays fast
    import optuna
    from matplotlib.figure import Figure

MIN_CHART_TRIALS = 2  # a history or a parallel-coordinate plot of one trial shows nothing
CHART_HEIGHT = "380px"
PLOTLY_CONFIG = {"responsive": True, "displaylogo": False}


def plotly_js() -> str:
    """The plotly.js bundle shipped inside the plotly package (inlined once per page: no CDN)."""
    from plotly.offline import get_plotlyjs  # heavy: plotly only when a page is written

    return get_plotlyjs()


def figure_div(fig: Any, div_id: str) -> str:
    """One plotly figure as a <div> and the script that draws it; plotly.js itself is on the page once."""
    import plotly.io as pio  # heavy: plotly only when a chart is drawn

    fig.update_layout(autosize=True, margin={"l": 48, "r": 16, "t": 48, "b": 40}, width=None,
                      legend={"orientation": "h", "y": -0.2})
    return pio.to_html(fig, include_plotlyjs=False, full_html=False, config=PLOTLY_CONFIG,
                       div_id=re.sub(r"[^A-Za-z0-9_-]", "-", div_id), default_height=CHART_HEIGHT,
                       default_width="100%")


def png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure_png(fig: Figure) -> bytes:
    """A matplotlib figure drawn to PNG bytes in memory (the report never writes into plots/)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def load_study(db: Path, name: str) -> optuna.Study | None:
    """The named study in the run's sqlite file, or None while the search has not created it."""
    import optuna  # heavy: optuna only when a report reads a study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if Run(db.parent).optuna_problem():  # missing or unreadable: study_charts says so
        return None
    try:
        return optuna.load_study(study_name=name, storage=f"sqlite:///{db.absolute()}")
    except KeyError:  # no such study (yet)
        return None


def same_budget(study: optuna.Study) -> tuple[optuna.Study, int, int]:
    """(an in-memory study of the COMPLETE trials only, how many trials the study holds, how many PRUNED)."""
    import optuna  # heavy: optuna only when a report reads a study

    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    copy = optuna.create_study(directions=study.directions, study_name=study.study_name)
    copy.add_trials(done)
    return copy, len(trials), sum(t.state == optuna.trial.TrialState.PRUNED for t in trials)


def study_charts(db: Path, study_name: str, metric: str, asha_stopped: int = 0) -> tuple[str, list[tuple[str, Any]]]:
    """(a sentence saying which trials are drawn, or why nothing is; [(chart name, plotly figure)]).

    `asha_stopped`: how many of the study's trials the leaderboard says ASHA stopped. A search from before
    tune recorded those as PRUNED has them as COMPLETE; the sentence then says the charts include them."""
    import optuna  # heavy: optuna only when a report reads a study
    import optuna.visualization as vis

    study = load_study(db, study_name)
    if study is None:
        problem = Run(db.parent).optuna_problem()
        return (f"No Optuna chart: {problem}." if problem else
                f"No Optuna study {study_name} in {db.name} yet: no chart."), []
    fair, total, pruned = same_budget(study)
    n = len(fair.trials)
    if asha_stopped > pruned:
        said = (f"Optuna's charts below use the {n} of {total} trials Optuna records as COMPLETE. This search "
                f"recorded the {asha_stopped} trials ASHA stopped as COMPLETE too (tune now records them as "
                "PRUNED), so these charts include them: their scores come from fewer epochs.")
    else:
        said = (f"Optuna's charts below use {n} of {total} trials (those not stopped by ASHA: they ran to the "
                f"epoch limit or stopped early on patience), so every point was scored at the same budget.")
    said += f" Optuna numbers them 0 to {n - 1} in the order they started."
    if n < MIN_CHART_TRIALS:
        return (f"{n} of {total} trials ran at the full budget (the others were stopped by ASHA, failed or are "
                f"still running): too few to chart (needs {MIN_CHART_TRIALS}+)."), []
    target = f"best {metric}"
    # a multi-objective study (a space's objectives): the charts show the first objective, the score
    first = {"target": (lambda t: t.values[0])} if len(study.directions) > 1 else {}
    charts: list[tuple[str, Any]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        charts.append(("optimization history", vis.plot_optimization_history(fair, target_name=target, **first)))
        charts.append(("parallel coordinates", vis.plot_parallel_coordinate(fair, target_name=target, **first)))
        if n < MIN_IMPORTANCE_TRIALS:
            said += (f" Importances need {MIN_IMPORTANCE_TRIALS}+ such trials (fANOVA on fewer is noise): not "
                     "drawn.")
        else:
            try:
                evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)  # as plots/importance.png
                charts.append(("parameter importances",
                               vis.plot_param_importances(fair, evaluator=evaluator, target_name=target,
                                                          **first)))
            except (ValueError, RuntimeError) as e:  # e.g. no parameter varied
                said += f" Importances not available: {str(e)[:160]}"
    return said, charts
