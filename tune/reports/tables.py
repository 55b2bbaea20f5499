"""Every test-results table, rendered one way.

A table type is a function from a result file's dict (comparison.json, evaluation.json) to a `Table` of
plain-text cells; a `Table` writes itself as markdown (comparison.md, evaluation.md, the model card) or
HTML (the report). Every cell is a tune.metrics.cells.Cell printed by `Cell.text`, every metric is named
by its entry's label (tune.metrics.classification.METRICS), every threshold rule by THRESHOLD_RULES.
The CSV files hold the cells' numbers, one line per cell (`cells_csv`).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from html import escape
from typing import Any

from tune.metrics.cells import PairedTest
from tune.metrics.classification import AT_HALF, AT_VALID, HEADLINE, METRICS, THRESHOLD_RULES, ThresholdRule
from tune.runs.comparison import Cells, ModelRow, VariantRow
from tune.runs.evaluation import MEAN
from tune.runs.files import Comparison, Evaluation

THRESHOLD_METRICS = [m for m in METRICS if not METRICS[m].ranking]  # accuracy, precision, recall, f1
RANKING_METRICS = [m for m in METRICS if METRICS[m].ranking]  # auc, ap, eer
# The notebook's table: its four threshold metrics, then ROC-AUC; the report puts ROC-AUC (the verdict's) first.
NOTEBOOK = [*THRESHOLD_METRICS, "auc"]
REPORT = ["auc", *THRESHOLD_METRICS]


def label(metric: str) -> str:
    return METRICS[metric].label


def rule_name(rule: str) -> str:
    """"threshold 0.5", "threshold chosen on valid": a rule's short name."""
    return THRESHOLD_RULES.get(rule, rule).split(":")[0].split(" (")[0]


@dataclass
class Table:
    head: list[str]
    rows: list[list[str]]  # plain text
    caption: str = ""
    bold: set[int] = field(default_factory=set)  # rows to emphasise (e.g. a mean over sources)

    def markdown(self) -> str:
        rows = [[f"**{c}**" if i in self.bold and j < 2 else c for j, c in enumerate(r)]
                for i, r in enumerate(self.rows)]
        lines = ["| " + " | ".join(self.head) + " |", "|" + "---|" * len(self.head)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
        return "\n".join(lines) + ("\n\n" + self.caption if self.caption else "") + "\n"

    def html(self) -> str:
        """Cells of the form "value ± t [low, high]" wrap before the interval, so the table stays narrow."""
        def td(c: str) -> str:
            value, sep, interval = c.partition(" [")
            return f"{escape(value)}<br><small>[{escape(interval)}</small>" if sep else escape(c)

        body = "".join(f'<tr{" class=bold" if i in self.bold else ""}>' + "".join(f"<td>{td(c)}</td>" for c in r)
                       + "</tr>" for i, r in enumerate(self.rows))
        caption = f'<p class="note">{escape(self.caption)}</p>' if self.caption else ""
        return (f'<div class="scroll"><table><thead><tr>{"".join(f"<th>{escape(h)}</th>" for h in self.head)}'
                f"</tr></thead><tbody>{body}</tbody></table></div>{caption}")


# --------------------------------------------------------------------------- finalize's comparison
def rule_table(rows: list[ModelRow], rule: ThresholdRule, metrics: list[str] = NOTEBOOK) -> Table:
    """Each model's cells at one threshold rule (the notebook's table)."""
    return Table(["Model", *(label(m) for m in metrics)],
                 [[r.model, *(r.cell(m, rule).text() for m in metrics)] for r in rows])


def comparison_caption(cmp: Comparison) -> str:
    return (f"Cells: mean over seeds ± half-width of its 95% t-interval over seeds [95% bootstrap interval over "
            f"test images: {cmp.bootstrap.resamples} resamples stratified by class, each resample's metric averaged "
            "over seeds]. Positive class: Fake.")


def test_text(t: PairedTest, alpha: float) -> str:
    """'difference +0.012, paired bootstrap p = 0.300, not significant at α = 0.05'."""
    return (f"difference {t.difference:+.3f}, paired bootstrap p = {t.p_value:.3f}, "
            f"{'significant' if t.significant else 'not significant'} at α = {alpha}")


def verdict_lines(cmp: Comparison) -> list[str]:
    """The best model by accuracy (at 0.5) and by ROC-AUC, and whether its lead over the runner-up is significant."""
    lines = [f"Skipped by the search: {arch} ({why})." for arch, why in cmp.skipped.items()]
    for m in HEADLINE:
        name = label(m) if METRICS[m].ranking else f"{label(m).lower()} at threshold 0.5"
        e = cmp.best[m]
        if e.tie:
            line = f"By {name}: {e.model} and {e.runner_up} tie ({e.value:.3f})"
        else:
            line = f"Best model by {name}: {e.model} ({e.value:.3f})"
        if e.test is not None:
            line += f"; vs {e.runner_up} ({e.runner_up_value:.3f}): {test_text(e.test, cmp.alpha)}"
        lines.append(line + ".")
    return lines


def picked_lines(cmp: Comparison) -> list[str]:
    """What finalize --pick shipped (models/picked/) against the most accurate winner, with the paired test."""
    p = cmp.picked
    if not p:
        return []
    head = f"Shipped (finalize --pick {p.rule}): {p.model}"
    if p.same:
        return [f"{head}, the most accurate by test {label('auc')}." + picked_costs(cmp)]
    parts = []
    for m, e in p.metrics.items():
        text = f"{label(m)} {e.value:.3f} vs {e.reference:.3f}"
        parts.append(text + (f", {test_text(e.test, cmp.alpha)}" if e.test is not None else ""))
    return [f"{head}; against the most accurate, {p.most_accurate}, on the test split: {'; '.join(parts)}."
            + picked_costs(cmp)]


def cost_text(name: str, v: float | int | None) -> str:
    if v is None:
        return "n/a"
    if name == "params":
        return f"{int(v):,}"
    return f"{v:.1f}" if name == "onnx_mb" and v >= 1 else f"{v:.3f}" if name == "onnx_mb" else f"{v:.2f}"


def cost_table(cmp: Comparison) -> Table | None:
    """Each model's measured costs beside its test metrics: ms per image at batch 1 and at the serving batch,
    parameters, ONNX size (tune.evaluation.costs); None for a comparison.json from before costs."""
    if not cmp.costs:
        return None
    s, names = cmp.costs.settings, list(cmp.costs.labels)
    threads = s.threads or "the trials'"
    head = {"latency_ms": "ms / image, batch 1", "latency_batch_ms": f"ms / image, batch {s.batch}",
            "params": "Parameters", "onnx_mb": "ONNX MB"}
    return Table(["Model", label("auc"), *(head.get(n, n) for n in names)],
                 [[r.model, r.cell("auc").text(),
                   *(cost_text(n, cmp.costs.models.get(r.name, {}).get(n)) for n in names)] for r in cmp.rows],
                 f"Costs of each model's chosen seed, measured once after the retrainings on {cmp.costs.device}: "
                 f"median over {s.repeats} runs at batch 1 ({max(2, s.repeats // 3)} at batch {s.batch}) "
                 f"after {s.warmup} warm-up runs, {threads} torch thread(s), fixed "
                 "inputs; the same settings as the search's trials (the space's latency:).")


def picked_costs(cmp: Comparison) -> str:
    """' It costs 2.10 ms per image at batch 1 against 11.40 for ...': what the pick bought, when measured."""
    p = cmp.picked
    if not (p and cmp.costs) or p.same:
        return ""
    rows = cmp.costs.models
    a, b = rows[p.model], rows[p.most_accurate]
    a_ms, b_ms = a.get("latency_ms"), b.get("latency_ms")
    return (f" It costs {cost_text('latency_ms', a_ms)} ms per image at batch 1 against "
            f"{cost_text('latency_ms', b_ms)} for {p.most_accurate} "
            f"({a_ms / b_ms:.2f}x), with {cost_text('params', a.get('params'))} parameters against "
            f"{cost_text('params', b.get('params'))}.") if a_ms and b_ms else ""


ENSEMBLE_CAPTION = (
    "Predictors of each model: the chosen seed (the exported one, the reference); its seeds each alone (the main "
    "table's row), and each with flip test-time augmentation (TTA: P = mean of P(fake) of the image and of its "
    "mirror image); the ensemble of its seeds (one predictor: P = mean of the seeds' P(fake)), and the ensemble "
    "with flip TTA. Cells of the seeds: mean ± 95% t half-width over seeds [95% bootstrap interval over test "
    "images]; one predictor (the chosen seed, an ensemble) has no interval over seeds, only the bootstrap one (the "
    "same resamples). Each predictor's valid threshold is Youden's J on its own validation probabilities. vs "
    "chosen seed: the difference and its two-sided paired bootstrap p (the same resamples).")


def _vs(r: VariantRow, rule: ThresholdRule, m: str) -> str:
    v = r.versus(m, rule)
    if v is None or v.test is None:
        return "reference" if r.variant == "chosen_seed" else "n/a"
    return f"{v.test.difference:+.3f}, p = {v.test.p_value:.3f}{' (significant)' if v.test.significant else ''}"


def ensemble_table(cmp: Comparison) -> Table:
    """Every predictor of every model (tune.evaluation.ensembles) with its paired test against the chosen seed."""
    rows = cmp.ensembles.rows if cmp.ensembles else []
    return Table(["Model", "Predictor", label("auc"), f"{label('auc')} vs chosen seed",
                  f"{label('accuracy')} at the valid threshold", "vs chosen seed"],
                 [[r.model, r.predictor, r.cell("auc").text(), _vs(r, AT_HALF, "auc"),
                   r.cell("accuracy", AT_VALID).text(), _vs(r, AT_VALID, "accuracy")] for r in rows],
                 ENSEMBLE_CAPTION)


def ensemble_lines(cmp: Comparison) -> list[str]:
    """Per model: does the ensemble of its seeds beat the chosen seed (AUC), and with flip TTA?"""
    out, ens = [], cmp.ensembles
    for r in (r for r in (ens.rows if ens else []) if r.variant == "ensemble"):
        tta = ens.row(r.name, "ensemble_hflip") if ens else None
        e, t = r.versus("auc"), tta.versus("auc") if tta else None
        if not (e and e.test and t and t.test):  # an AUC undefined on these test images: nothing to say
            continue
        beats = "beats" if e.test.significant and e.test.difference > 0 else "does not significantly beat"
        out.append(f"{r.model}: the ensemble of {len(r.seeds)} seeds {beats} the chosen seed: AUC "
                   f"{e.value:.3f} vs {e.reference:.3f} (seed {r.chosen_seed}), {e.test.difference:+.3f}, "
                   f"paired bootstrap p = {e.test.p_value:.3f}, {'' if e.test.significant else 'not '}significant at "
                   f"α = {cmp.alpha}; with flip TTA: AUC {t.value:.3f}, {t.test.difference:+.3f}, p = "
                   f"{t.test.p_value:.3f}.")
    return out


def comparison_markdown(cmp: Comparison) -> str:
    """comparison.md: the notebook's table per threshold rule, the threshold-free metrics, the verdict, then the
    ensembles (and, with held-out sources, the trade-off: tune.reports.tradeoff adds it)."""
    out = [f"## Test results: run {cmp.run} ({cmp.n_test} test images, {cmp.seeds} seed(s) per model)", ""]
    for rule, text in cmp.threshold_rules.items():
        out += [f"At {text}:", "", rule_table(cmp.rows, rule).markdown()]
    free = [m for m in RANKING_METRICS if m != "auc"]
    out += ["Threshold-free:", "", rule_table(cmp.rows, AT_HALF, free).markdown(), comparison_caption(cmp), ""]
    out += verdict_lines(cmp) + picked_lines(cmp)
    if cmp.video:
        out += ["", f"### Per video ({cmp.video.n_videos} test videos, {cmp.video.n_frames} frames)", "",
                video_table(cmp).markdown()]
    costs = cost_table(cmp)
    if costs is not None:
        out += ["", "### Costs", "", costs.markdown()]
    if cmp.ensembles is not None:  # comparison.json files from before ensembles have none
        out += ["", "### Ensembles and flip TTA", "", ensemble_table(cmp).markdown(), *ensemble_lines(cmp)]
    return "\n".join(out) + "\n"


def video_table(cmp: Comparison) -> Table:
    """Each model's cells per test video at both threshold rules: ROC-AUC, then accuracy at each rule."""
    rows = cmp.video.rows if cmp.video else []
    head = ["Model", "Aggregation", label("auc"), label("ap"), label("eer"),
            *(f"{label('accuracy')} at {rule_name(rule)}" for rule in THRESHOLD_RULES)]
    return Table(head, [[r.model, r.aggregation, *(r.cell(m).text() for m in ("auc", "ap", "eer")),
                         *(r.cell("accuracy", rule).text() for rule in THRESHOLD_RULES)] for r in rows],
                 caption=cmp.video.about if cmp.video else "")


def cells_csv(rows: list[tuple[list[Any], Cells]], keys: list[str]) -> str:
    """One line per cell: the values of `keys` of its row (model, source, ...), the rule, the metric and the cell's
    numbers."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*keys, "threshold_rule", "metric", "value", "low", "high", "t_half", "seeds"])
    for values, cells in rows:
        for rule in THRESHOLD_RULES:
            for m, c in cells.get(rule, {}).items():
                w.writerow([*values, rule, m, *("" if v is None else v for v in (c.value, c.low, c.high, c.t_half)),
                            len(c.per_seed) or 1])
    return buf.getvalue()


def comparison_csv(cmp: Comparison) -> str:
    """comparison.csv: every cell of every predictor of every model (variant `seeds` is the main table)."""
    rows = [([r.name, r.kind, "seeds"], r.cells) for r in cmp.rows]
    rows += [([r.name, r.kind, r.variant], r.cells) for r in (cmp.ensembles.rows if cmp.ensembles else [])
             if r.variant != "seeds"]
    rows += [([r.name, r.kind, "video"], r.cells) for r in (cmp.video.rows if cmp.video else [])]
    return cells_csv(rows, ["name", "kind", "variant"])


# --------------------------------------------------------------------------- evaluate's tables
def evaluation_table(ev: Evaluation, condition: str) -> Table:
    """Per model and source (and their mean) at one condition: ROC-AUC, AP and EER, then each threshold metric at
    the model's valid threshold and at 0.5."""
    rules = list(THRESHOLD_RULES)[::-1]  # at the valid threshold first
    head = ["Model", "Source", "Fake", "Real", *(label(m) for m in RANKING_METRICS),
            *(f"{label(m)} at {rule_name(rule).removeprefix('threshold ')}" for rule in rules
              for m in THRESHOLD_METRICS), "Note"]
    rows, bold = [], set()
    for r in (r for r in ev.rows if r.condition == condition):
        if r.source == MEAN:
            bold.add(len(rows))
        rows.append([r.model, r.source, str(r.n_fake), str(r.n_real), *(r.cell(m).text() for m in RANKING_METRICS),
                     *(r.cell(m, rule).text() for rule in rules for m in THRESHOLD_METRICS), r.note])
    return Table(head, rows, bold=bold)


def paired_table(ev: Evaluation) -> Table:
    return Table(["Condition", "Source", "A", "B", "Metric", "A − B", "p", "significant at 0.05"],
                 [[p.condition, p.source, p.a, p.b, label(p.metric), f"{p.test.difference:+.3f}",
                   f"{p.test.p_value:.3f}", "yes" if p.test.significant else "no"] for p in ev.paired])


def evaluation_csv(ev: Evaluation) -> str:
    return cells_csv([([r.model, r.source, r.condition, r.n_fake, r.n_real], r.cells) for r in ev.rows],
                     ["model", "source", "condition", "n_fake", "n_real"])
