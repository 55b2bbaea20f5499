"""A space's objectives and serving settings, parsed: `objectives: [val_auc: max, latency_ms: min]`,
`sampler: tpe` or `nsga2`, and `latency: {threads: 1, batch: 32, warmup: 2, repeats: 7, onnx: false}`.

The first objective is the space's `metric` (what ASHA cuts on, what a trial's score is and what finalize ranks
by); Optuna is told every objective, in order, each with its direction. A space without `objectives` has the
one objective `metric` / `mode`; `sampler` then stays TPE.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tune.core import UserError
from tune.metrics.classification import search_metrics
from tune.metrics.costs import COSTS, LatencySettings

SAMPLERS = ("tpe", "nsga2")


def objective_names() -> dict[str, str]:
    """Every name an objective may be, with its natural direction: any search metric, and every cost."""
    return {**search_metrics(), **{c.name: c.mode for c in COSTS.values()}}


def parse_objectives(src: str, v: Any) -> tuple[tuple[str, str], ...]:
    """[NAME: max|min, ...] (or [NAME, ...]: each its natural direction) as ((name, mode), ...)."""
    if not isinstance(v, list) or not v:
        raise UserError(f"{src}: key 'objectives': expected a list such as [val_auc: max, latency_ms: min], got {v!r}")
    known = objective_names()
    out: list[tuple[str, str]] = []
    for item in v:
        name, mode = (item, None) if isinstance(item, str) else \
            next(iter(item.items())) if isinstance(item, dict) and len(item) == 1 else (None, None)
        if not isinstance(name, str):
            raise UserError(f"{src}: key 'objectives': each entry is NAME: max or NAME: min, got {item!r}")
        if name not in known:
            raise UserError(f"{src}: key 'objectives': unknown objective {name!r}; expected a metric "
                            f"({', '.join(sorted(search_metrics())[:6])}, ...) or a cost ({', '.join(COSTS)})")
        mode = known[name] if mode is None else mode
        if mode not in ("max", "min"):
            raise UserError(f"{src}: key 'objectives': direction of {name} must be max or min, got {mode!r}")
        if any(name == n for n, _ in out):
            raise UserError(f"{src}: key 'objectives': {name} is named twice")
        out.append((name, mode))
    if out[0][0] in COSTS:
        raise UserError(f"{src}: key 'objectives': the first objective is what ASHA cuts on and a trial is ranked by: "
                        f"a validation metric, not the cost {out[0][0]}")
    return tuple(out)


def parse_sampler(src: str, v: Any) -> str:
    if v not in SAMPLERS:
        raise UserError(f"{src}: key 'sampler': expected one of {', '.join(SAMPLERS)}, got {v!r}")
    return str(v)


def parse_latency(src: str, v: Any) -> LatencySettings:
    if not isinstance(v, dict):
        raise UserError(f"{src}: key 'latency': expected a mapping such as {{threads: 1, batch: 32}}, got {v!r}")
    fields = {f.name: f for f in dataclasses.fields(LatencySettings)}
    for k, x in v.items():
        if k not in fields:
            raise UserError(f"{src}: key 'latency.{k}': unknown key; expected one of {sorted(fields)}")
        want = bool if fields[k].type in (bool, "bool") else int  # the on/off settings; the rest are counts
        if type(x) is not want or (want is int and x < (1 if k in ("batch", "repeats") else 0)):
            raise UserError(f"{src}: key 'latency.{k}': expected {'true or false' if want is bool else 'an integer'}"
                            f"{' >= 1' if k in ('batch', 'repeats') else ' >= 0' if want is int else ''}, got {x!r}")
    return LatencySettings(**v)


def measuring(serving: LatencySettings, goals: tuple[tuple[str, str], ...]) -> LatencySettings:
    """`serving` with the switch of every cost an objective names turned on (an objective on latency_int8_ms
    measures it, whatever `latency:` says)."""
    return dataclasses.replace(serving, **{COSTS[n].needs: True for n, _ in goals if n in COSTS and COSTS[n].needs})


def result_keys(goals: tuple[tuple[str, str], ...], score: str) -> list[str]:
    """The result key Optuna reads for each objective: the trial's score for the first; a cost by its name (a
    trial reports it in every row once measured); a further metric as `kept_NAME` (its value at the kept epoch)."""
    return [score if i == 0 else name if name in COSTS else f"kept_{name}" for i, (name, _) in enumerate(goals)]


def sampler_for(kind: str, seed: int, startup: int) -> Any:
    """Optuna's sampler: TPE (multi-objective when there are several objectives: MOTPE) or NSGA-II."""
    from optuna.samplers import NSGAIISampler, TPESampler  # heavy: optuna only when a search builds its sampler

    if kind == "nsga2":
        return NSGAIISampler(seed=seed, population_size=max(4, startup))
    return TPESampler(seed=seed, n_startup_trials=startup)
