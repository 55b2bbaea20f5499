"""`python -m tune report [RUN] [--open]`: a run as one self-contained HTML page, results/RUN/report.html.

Written at the end of finalize and after a search with --no-finalize; the command rebuilds it at
any time from the run folder, also while a search runs (it reads only what is on disk, and a run
without finalize gets the sections it can fill plus a line saying what is missing). The page
works from file:// with no network: plotly.js is inlined once, images are data: URIs, fonts are
the system's. Sections come in the order a reader needs them: the verdict first, how to
reproduce it last.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from html import escape
from pathlib import Path

from tune.core import atomic_write_text
from tune.reports import pareto, tradeoff
from tune.reports import sections as sec
from tune.reports.charts import plotly_js
from tune.runs.files import Comparison
from tune.runs.layout import Run
from tune.runs.leaderboard import load_leaderboard

Log = Callable[[str], None]

# (anchor, heading, builder, needs): needs says which run files the section is drawn from
SECTIONS: list[tuple[str, str, Callable[[sec.Context], str], str]] = [
    ("verdict", "Verdict", sec.verdict, "comparison"),
    ("comparison", "Test results", sec.comparison, "comparison"),
    ("curves", "ROC curves, confusion matrices, learning curves", sec.curves, "comparison"),
    ("explain", "Where the winners looked: class-activation maps", sec.explanations, "comparison"),
    ("evaluation", "Per source and robustness", sec.evaluation, "evaluation"),
    ("tradeoff", "In-domain vs held-out validation", tradeoff.section, "heldout"),
    ("pareto", "Accuracy against latency: the Pareto front", pareto.section, "latency"),
    ("leaderboard", "Leaderboard: every trial", sec.leaderboard, ""),
    ("search", "The search, per architecture (Optuna)", sec.search, ""),
    ("epochs", "Epochs per trial (ASHA)", sec.epochs, ""),
    ("dataset", "Dataset", sec.dataset, ""),
    ("reproduce", "Reproduce", sec.reproduce, ""),
]

CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f5f6f8;color:#1d2127;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,
 "Helvetica Neue",Arial,sans-serif}
main{max-width:1120px;margin:0 auto;padding:12px}
header h1{font-size:1.5em;margin:.3em 0}
nav{display:flex;flex-wrap:wrap;gap:4px 14px;font-size:.9em}
section{background:#fff;border:1px solid #dcdfe4;border-radius:8px;padding:8px 14px 14px;margin:14px 0;min-width:0}
h2{font-size:1.25em;margin:.4em 0}
h3{font-size:1.05em;margin:1em 0 .3em}
p,li{overflow-wrap:anywhere}
.scroll{overflow-x:auto;max-width:100%}
.board-wrap .scroll{max-height:70vh}
table{border-collapse:collapse;font-variant-numeric:tabular-nums;font-size:.9em}
th,td{padding:3px 9px;border-bottom:1px solid #e6e8eb;text-align:left;white-space:nowrap}
thead th{position:sticky;top:0;background:#eef0f3}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th[aria-sort=ascending]::after{content:" \\25B2"}
table.sortable th[aria-sort=descending]::after{content:" \\25BC"}
td.ended-stopped_by_asha{color:#666}
td.ended-errored,td.ended-diverged{color:#b00020}
figure{margin:10px 0}
img{max-width:100%;height:auto;display:block}
.chart{width:100%;margin:8px 0}
pre{background:#f0f2f5;padding:8px 10px;overflow-x:auto;font-size:.85em}
.versions code{margin-right:12px;white-space:nowrap}
code{overflow-wrap:anywhere}
.headline{font-size:1.1em}
ul.verdict li.sig{font-weight:600}
.missing{background:#fff7e0;border:1px solid #f0d890;border-radius:8px;padding:8px 14px}
.note{color:#555;font-size:.9em}
.error{color:#b00020}
"""

# Click a header to sort by that column; numeric columns (th data-type=num) sort by each cell's data-v.
SORT_JS = """
document.querySelectorAll("table.sortable").forEach(function (t) {
  var heads = t.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads, function (th, i) {
    th.addEventListener("click", function () {
      var asc = th.getAttribute("aria-sort") !== "ascending", num = th.dataset.type === "num";
      Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", asc ? "ascending" : "descending");
      var body = t.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      function key(r) { var c = r.cells[i]; return num ? c.dataset.v : c.textContent; }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === "" || y === "") { return (x === "") - (y === ""); }  // blanks last either way
        var c = num ? Number(x) - Number(y) : x.localeCompare(y);
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def context(run_dir: Path) -> sec.Context:
    run = Run(run_dir)
    cmp = Comparison.load(run.comparison("json")) if run.comparison("json").is_file() else None
    return sec.Context(run=run, meta=run.read(), cmp=cmp, board=load_leaderboard(run.path))


def missing(ctx: sec.Context) -> list[str]:
    """What a reader would look for that this run does not have yet, and the command that makes it."""
    out = []
    if ctx.cmp is None:
        out.append("the test results (verdict, comparison tables, ROC curves, confusion matrices, learning curves): "
                   f"finalize has not run; <code>python -m tune finalize {escape(ctx.name)}</code> makes them")
    budget = (ctx.meta.space["budget"]["trials"] or 0) * len(ctx.meta.architectures)
    board = ctx.board
    unfinished = 0 if board.empty else int(board["ended"].isin(["running", "interrupted"]).sum())
    if unfinished or len(board) < budget:
        out.append(f"a finished search: {len(board) - unfinished} of {budget} trials have ended so far (the search "
                   "is running or was interrupted); <code>python -m tune report</code> rebuilds this page")
    return out


def build_html(run_dir: Path, *, log: Log = print) -> str:
    ctx = context(run_dir)
    has = {"": True, "comparison": ctx.cmp is not None, "evaluation": bool(ctx.cmp and ctx.cmp.evaluation),
           "heldout": bool(ctx.meta.data.valid_extra),
           "latency": "latency_ms" in ctx.board and bool(ctx.board["latency_ms"].notna().any())}
    parts, nav = [], []
    for anchor, heading, build, needs in SECTIONS:
        if not has[needs]:
            continue
        try:
            body = build(ctx)
        except Exception as e:  # noqa: BLE001 - one broken section must not cost the reader the others
            log(f"warning: report section {anchor!r} failed: {type(e).__name__}: {e}")
            body = f'<p class="error">This section could not be built: {escape(type(e).__name__)}: {escape(str(e))}</p>'
        wrap = ' class="board-wrap"' if anchor == "leaderboard" else ""
        parts.append(f'<section id="{anchor}"{wrap}><h2>{escape(heading)}</h2>{body}</section>')
        nav.append(f'<a href="#{anchor}">{escape(heading.split(":")[0].split(",")[0])}</a>')
    body = "".join(parts)
    gaps = missing(ctx)
    space = ctx.meta.space
    summary = (f"{len(space['architectures'])} architecture(s): {escape(', '.join(space['architectures']))}; "
               f"{space['budget']['trials']} trials each, up to {space['budget']['max_epochs']} epochs; search metric "
               f"{escape(ctx.metric)} ({escape(space['mode'])}). Report built {time.strftime('%Y-%m-%d %H:%M:%S')}.")
    plotly = "Plotly.newPlot" in body

    return "".join([
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>deepfake-tune report: {escape(ctx.name)}</title><style>{CSS}</style>",
        f'<script type="text/javascript">{plotly_js()}</script>' if plotly else "",
        f"</head><body><main><header><h1>Run {escape(ctx.name)}</h1><p>{summary}</p><nav>{''.join(nav)}</nav>"
        "</header>",
        (f'<div class="missing"><b>Not in this report yet:</b><ul>{"".join(f"<li>{g}</li>" for g in gaps)}</ul></div>'
         if gaps else ""),
        body, f"</main><script>{SORT_JS}</script></body></html>\n"])


def write_report(run_dir: Path, *, log: Log = print) -> Path:
    """Build the page and write it atomically: a reader never opens half a report."""
    path = Run(run_dir).report_html
    atomic_write_text(path, build_html(run_dir, log=log))
    return path


