"""In-domain vs held-out validation, rendered: the trade-off a run with held-out sources (tune/data/heldout.py) shows.

A detector is used on generators it never saw, and the model with the best in-domain validation AUC can
be the worst there. So a run with held-out validation sources shows both numbers side by side: per
finalized model (its retrained seeds' kept epochs, mean over seeds) in comparison.md/json and the report,
with one sentence saying whether in-domain and held-out validation pick the same model (and, when they
do not, both models' test AUC and the paired bootstrap between them); and per trial, as a scatter of
in-domain vs held-out AUC coloured by architecture in the report. Both numbers are validation numbers:
neither ever reads the test split, which only the sentence's last clause reports. The numbers (comparison.json's
"tradeoff") come from tune/evaluation/tradeoff.py; this module writes them as a table, a sentence and a scatter.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

import numpy as np

from tune.evaluation.tradeoff import HELD_OUT, IN_DOMAIN
from tune.metrics.classification import HELDOUT, metric_description
from tune.reports.charts import figure_div
from tune.reports.figures import color
from tune.reports.sections import Context
from tune.reports.tables import Table, label
from tune.runs.comparison import Tradeoff, TradeoffRow


def sentence(t: Tradeoff) -> str:
    """Whether in-domain and held-out validation pick the same model, with both numbers ("" with one model)."""
    if t.agree is None:
        return ""
    by = {r.name: r for r in t.rows}
    a, b = by[str(t.in_domain_winner)], by[str(t.held_out_winner)]

    def named(r: TradeoffRow) -> str:
        return f"{r.name} ({IN_DOMAIN} {r.validation[IN_DOMAIN]:.3f}, {HELD_OUT} {r.validation[HELD_OUT]:.3f})"

    if t.agree:
        return f"In-domain and held-out validation pick the same model: {named(a)}."
    verdict = "significant" if t.significant else "not significant"
    return (f"The in-domain winner is not the held-out winner: validation AUC on valid picks {named(a)}, "
            f"held-out validation AUC picks {named(b)}; on the test split their AUC is {a.test_auc:.3f} vs "
            f"{b.test_auc:.3f}, difference {t.test_difference:+.3f}, paired bootstrap p = {t.p_value:.3f}, "
            f"{verdict} at α = {t.alpha}.")


def columns(t: Tradeoff) -> list[str]:
    """val_auc, xval_auc, and AUC per held-out source when there are several."""
    per_source = [k for k in t.rows[0].validation if k.startswith(f"{HELDOUT}[")]
    return [IN_DOMAIN, HELD_OUT, *(per_source if len(per_source) > 1 else [])]


def tradeoff_table(t: Tradeoff) -> Table:
    cols = columns(t)
    return Table(["Model", *cols, f"test {label('auc')}"],
                 [[r.model, *(f"{r.validation.get(c, math.nan):.3f}" for c in cols), f"{r.test_auc:.3f}"]
                  for r in t.rows], CAPTION)


CAPTION = ("Validation AUC of each model's retrained seeds at their kept epochs, mean over seeds: val_auc on the "
           "valid split, xval_auc averaged over the held-out validation sources (each weighs the same), with "
           "several sources xval[SOURCE]_auc per source; test AUC as in the table above (mean over seeds). The "
           "held-out sources were never trained on; only the test column reads the test split.")


def markdown(t: Tradeoff | None) -> str:
    """comparison.md's section from the comparison's trade-off ("" for a run without held-out sources)."""
    if not t:
        return ""
    lines = ["", "### In-domain vs held-out validation", "", tradeoff_table(t).markdown()]
    lines += [sentence(t)] if sentence(t) else []
    return "\n".join(lines) + "\n"


def scatter(ctx: Context) -> Any:
    """Every scored trial at its kept epoch: in-domain (val_auc) vs held-out (xval_auc) validation AUC, one
    colour per architecture; each architecture's leaderboard winner ringed; the diagonal is where they agree."""
    import plotly.graph_objects as go  # heavy: plotly and matplotlib only when a chart is drawn
    from matplotlib.colors import to_hex

    board = ctx.board.dropna(subset=[IN_DOMAIN, HELD_OUT])
    fig = go.Figure()
    for arch in ctx.meta.architectures:
        mine = board[board["arch"] == arch]
        if mine.empty:
            continue
        first = mine.index == mine.index.min()  # the board is sorted best first: this architecture's winner
        fig.add_trace(go.Scatter(
            x=mine[IN_DOMAIN], y=mine[HELD_OUT], mode="markers", name=arch, text=mine["trial_id"],
            marker={"color": to_hex(color(arch)), "size": [14 if f else 8 for f in first],
                    "line": {"width": [2 if f else 0 for f in first], "color": "black"}},
            hovertemplate=f"trial %{{text}}<br>{IN_DOMAIN} %{{x:.3f}}<br>{HELD_OUT} %{{y:.3f}}<extra>{arch}</extra>"))
    values = board[[IN_DOMAIN, HELD_OUT]].to_numpy(dtype=float)
    lo, hi = (float(np.nanmin(values)), float(np.nanmax(values))) if values.size else (0.0, 1.0)
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="same on both",
                             line={"color": "lightgray", "dash": "dot"}, hoverinfo="skip"))
    fig.update_layout(title=f"Per trial at its kept epoch (ringed: each architecture's winner by {ctx.metric})",
                      xaxis_title=f"in-domain validation AUC ({IN_DOMAIN})",
                      yaxis_title=f"held-out validation AUC ({HELD_OUT})")
    return fig


def section(ctx: Context) -> str:
    """The report's section: the rule, the finalized models side by side and the sentence, then the scatter."""
    held = (ctx.meta.data.valid_extra or {}).get("sources", [])
    rule = ctx.meta.rule.get("about") or metric_description(ctx.metric)
    sources = ", ".join(f"{s['name']} ({s['n_fake']} fake, {s['n_real']} real)" for s in held)
    out = [f"<p>Held-out validation sources (never trained on): {escape(sources)}. Selection rule: "
           f"{escape(rule)}.</p>"]
    t = ctx.cmp.tradeoff if ctx.cmp else None
    if t:
        out += [tradeoff_table(t).html()]
        out += [f'<p class="headline">{escape(sentence(t))}</p>'] if sentence(t) else []
    if IN_DOMAIN in ctx.board and ctx.board[[IN_DOMAIN, HELD_OUT]].notna().all(axis=1).any():
        out.append(f'<div class="chart">{figure_div(scatter(ctx), "tradeoff-scatter")}</div>')
    else:
        out.append("<p>No trial has an in-domain and a held-out AUC yet: no scatter.</p>")
    return "".join(out)
