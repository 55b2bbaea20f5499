"""Search spaces as data: a YAML file → a typed `SearchSpace` → one Optuna define-by-run per architecture.

File format (see search_spaces/default.yaml):

    metric: val_auc          # a per-epoch validation metric: val_*, or with valid_extra xval_*, mean_*, min_*
    mode: max
    valid_extra: [/data/gen_b]   # held-out validation sources, never trained on (relative: to this file)
    seed: 0
    image_size: 224
    budget: {trials: 20, max_epochs: 15, grace_period: 2, reduction_factor: 3, patience: 3}
                             # trials per architecture; and/or time: 20m (the whole search's wall time)
    resources: {cpus_per_trial: 1, gpus_per_trial: 0.25}   # GPUs only used when CUDA is present
    cache_dtype: float16     # frozen-prefix features stored as float16 (half the disk) or float32 (default)
    checkpoints: keep_best   # a finished trial keeps one checkpoint (its kept weights); keep_all: every epoch's
    objectives: [val_auc: max, latency_ms: min]   # optional: several objectives (the first is `metric`); see
    sampler: tpe             # tpe or nsga2 (tune/search/objectives.py); latency: how costs are measured
    fixed: {batch_size: 32}                                  # TrainConfig fields shared by all trials
    architectures:
      SOME_BACKBONE:                                         # a name from `python -m tune archs`
        lr: {type: loguniform, low: 1.0e-5, high: 1.0e-2}
        unfrozen_blocks: {type: int, low: 0, high: 5}
        head_sizes: {type: categorical, choices: [[128], [256, 64]]}
        weights: hub                                         # a plain value is fixed, not sampled
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tune.core import UserError
from tune.data.frames import Preprocess
from tune.metrics.classification import needs_heldout, search_metrics
from tune.metrics.costs import LatencySettings
from tune.models.detector import parse_head_sizes
from tune.models.hparams import SAMPLED, HParamKind
from tune.models.registry import check_hparams, get_arch
from tune.search.budget import parse_duration
from tune.search.objectives import measuring, parse_latency, parse_objectives, parse_sampler
from tune.training.config import TrainConfig, searchable_options

KINDS = SAMPLED  # a parameter's `type:` (one it does not sample is FIXED)
# What a trial's checkpoints become (tune/search/retention.py): keep_best, one per finished trial holding the kept
# epoch's weights; keep_all, every epoch's checkpoint, whole (each could be resumed from).
RETENTION = ("keep_best", "keep_all")


@dataclass(frozen=True)
class Param:
    name: str
    kind: HParamKind  # one of KINDS, or FIXED (a plain value in the space file)
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: int | None = None
    choices: tuple[Any, ...] = ()
    value: Any = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", HParamKind(self.kind))  # run.json and Ray's pickles hold the plain word


@dataclass(frozen=True)
class BudgetSpec:
    """The space file's `budget:` block as written; tune.search.budget.Budget is the running search's share of it."""

    trials: int | None = 8  # per architecture; None: as many as the time budget allows
    time_s: float | None = None  # wall time of the whole search (`time: 20m`); None: no limit
    max_epochs: int = 10
    grace_period: int = 2
    reduction_factor: int = 2
    patience: int = 3


@dataclass(frozen=True)
class Resources:
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0


@dataclass(frozen=True)
class SearchSpace:
    source: str
    metric: str = "val_auc"
    mode: str = "max"
    seed: int = 0
    image_size: int = 224
    budget: BudgetSpec = BudgetSpec()
    resources: Resources = Resources()
    fixed: dict[str, Any] = field(default_factory=dict)
    architectures: dict[str, dict[str, Param]] = field(default_factory=dict)
    valid_extra: tuple[str, ...] = ()  # held-out validation sources (absolute paths; tune/data/heldout.py)
    cache_dtype: str = "float32"  # how every trial stores its frozen-prefix features (TrainConfig.cache_dtype)
    checkpoints: str = RETENTION[0]  # one of RETENTION; a run.json written before it loads as keep_best
    objectives: tuple[tuple[str, str], ...] = ()  # (name, mode) of each; () : the one objective (metric, mode)
    sampler: str = "tpe"  # tpe or nsga2
    latency: LatencySettings = LatencySettings()  # how each trial measures what its kept model costs to serve
    prep: Preprocess = field(default_factory=Preprocess)  # `video: {frames: K}` and `faces: {...}` (data/frames.py)

    @property
    def goals(self) -> tuple[tuple[str, str], ...]:
        """Every objective Optuna is told, the first being (metric, mode)."""
        return self.objectives or ((self.metric, self.mode),)

    def base_config(self, arch: str) -> dict[str, Any]:
        """TrainConfig fields every trial of `arch` shares (sampled values are added on top). The kept epoch
        is the one with the best search metric unless the space says otherwise (e.g. monitor: val_loss)."""
        return {"monitor": self.metric, **self.fixed, "arch": arch, "epochs": self.budget.max_epochs,
                "patience": self.budget.patience,
                "image_size": self.image_size, "seed": self.seed, "cache_dtype": self.cache_dtype,
                **{p.name: p.value for p in self.architectures[arch].values() if p.kind == HParamKind.FIXED}}


class DefineByRun:
    """Optuna define-by-run space for one architecture. A module-level class, so Ray can pickle it."""

    def __init__(self, space: SearchSpace, arch: str) -> None:
        self.params = [p for p in space.architectures[arch].values() if p.kind != HParamKind.FIXED]
        self.base = space.base_config(arch)

    def __call__(self, trial: Any) -> dict[str, Any]:
        for p in self.params:
            if p.kind in (HParamKind.LOGUNIFORM, HParamKind.UNIFORM):
                trial.suggest_float(p.name, p.low, p.high, log=p.kind == HParamKind.LOGUNIFORM)
            elif p.kind == HParamKind.INT:
                trial.suggest_int(p.name, int(p.low), int(p.high), step=p.step or 1, log=p.log)
            else:
                trial.suggest_categorical(p.name, list(p.choices))
        return dict(self.base)  # Ray merges these constants with the sampled values


def _err(src: str, key: str, problem: str) -> UserError:
    return UserError(f"{src}: key '{key}': {problem}")


def _number(src: str, key: str, v: Any, *, integer: bool = False) -> float:
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok:
        raise _err(src, key, f"expected {'an integer' if integer else 'a number'}, got {v!r}")
    return v


def _mapping(src: str, key: str, v: Any) -> dict[str, Any]:
    if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
        raise _err(src, key, f"expected a mapping of names to values, got {type(v).__name__}")
    return v


def _check_keys(src: str, key: str, d: dict[str, Any], allowed: tuple[str, ...] | set[str]) -> None:
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise _err(src, f"{key}{unknown[0]}", f"unknown key; expected one of {sorted(allowed)}")


def _choice(src: str, key: str, name: str, c: Any) -> Any:
    if name == "head_sizes":  # Optuna choices must be scalars: encode widths as "256,64"
        if isinstance(c, int) and not isinstance(c, bool):
            c = [c]
        try:
            return ",".join(str(w) for w in parse_head_sizes(c))
        except UserError as e:
            raise _err(src, key, str(e)) from None
    if c is not None and not isinstance(c, (bool, int, float, str)):
        raise _err(src, key, f"choices must be numbers, strings or booleans, got {c!r}")
    return c


def _param(src: str, key: str, name: str, spec: Any) -> Param:
    if name == "weights" and isinstance(spec, dict) and list(spec) == ["file"]:
        return Param(name, HParamKind.FIXED, value=f"file:{spec['file']}")  # weights: {file: PATH}
    if not isinstance(spec, dict):
        return Param(name, HParamKind.FIXED, value=_choice(src, key, name, spec) if name == "head_sizes" else spec)
    _check_keys(src, f"{key}.", spec, ("type", "low", "high", "log", "step", "choices"))
    kind = spec.get("type")
    if not isinstance(kind, str) or kind not in KINDS:
        raise _err(src, f"{key}.type", f"expected one of {[str(k) for k in KINDS]}, got {kind!r}")
    kind = HParamKind(kind)
    if kind == HParamKind.CATEGORICAL:
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise _err(src, f"{key}.choices", "expected a non-empty list")
        return Param(name, kind, choices=tuple(_choice(src, f"{key}.choices", name, c) for c in choices))
    for bound in ("low", "high"):
        if bound not in spec:
            raise _err(src, f"{key}.{bound}", "missing")
    integer = kind == HParamKind.INT
    low = _number(src, f"{key}.low", spec["low"], integer=integer)
    high = _number(src, f"{key}.high", spec["high"], integer=integer)
    if low > high:
        raise _err(src, key, f"low ({low}) > high ({high})")
    if kind == HParamKind.LOGUNIFORM and low <= 0:
        raise _err(src, f"{key}.low", f"loguniform needs low > 0, got {low}")
    step = spec.get("step")
    if step is not None:
        _number(src, f"{key}.step", step, integer=True)
    return Param(name, kind, low=low, high=high, log=bool(spec.get("log", False)), step=step)


def _check_range(src: str, key: str, arch: str, p: Param) -> None:
    """Every value a parameter can take must be valid for the architecture (its registry entry says)."""
    if p.name in searchable_options():
        return  # checked with the whole config below
    values = (list(p.choices) if p.kind == HParamKind.CATEGORICAL else [p.value] if p.kind == HParamKind.FIXED
              else [p.low, p.high])
    for v in values:
        try:
            check_hparams(arch, {p.name: v})
        except UserError as e:
            raise _err(src, key, str(e)) from None


def monitors(space: SearchSpace) -> set[str]:
    """Every monitor a trial of the space can get (fixed, per architecture, or sampled)."""
    out = set()
    for arch, params in space.architectures.items():
        p = params.get("monitor")
        out |= {str(c) for c in p.choices} if p is not None and p.kind == HParamKind.CATEGORICAL else \
            {str(space.base_config(arch)["monitor"])}
    return out


def resize_modes(space: SearchSpace) -> set[str]:
    """Every resize mode a trial of the space can get (tune/search/driver.py prepares the images for each)."""
    out = set()
    for arch, params in space.architectures.items():
        p = params.get("resize")
        out |= {str(c) for c in p.choices} if p is not None and p.kind == HParamKind.CATEGORICAL else \
            {str(space.base_config(arch).get("resize", "bilinear"))}
    return out


def check_rule(space: SearchSpace) -> None:
    """A held-out or combined metric (or monitor) needs held-out validation sources: one line if none."""
    for name in sorted({space.metric} | monitors(space)):
        if needs_heldout(name) and not space.valid_extra:
            what = "metric" if name == space.metric else "monitor"
            raise UserError(f"{space.source}: {what} {name} needs held-out validation sources: list them as "
                            "valid_extra in the space file or give search --valid-extra DIR [DIR ...]")


def _paths(src: str, v: Any, base: Path | None) -> tuple[str, ...]:
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items):
        raise _err(src, "valid_extra", f"expected a folder path or a list of them, got {v!r}")
    return tuple(str(Path(base or ".", i).absolute()) for i in items)


def parse_space(doc: Any, src: str = "<space>", base: Path | None = None) -> SearchSpace:
    """Validate a loaded YAML document; every problem is one UserError naming file and key. Relative
    valid_extra paths are relative to `base` (the space file's folder)."""
    doc = _mapping(src, "(top level)", doc)
    top = ("metric", "mode", "seed", "image_size", "budget", "resources", "fixed", "architectures", "valid_extra",
           "cache_dtype", "checkpoints", "objectives", "sampler", "latency", "video", "faces")
    _check_keys(src, "", doc, top)
    metrics = search_metrics()
    objectives = parse_objectives(src, doc["objectives"]) if "objectives" in doc else ()
    if objectives and "metric" in doc and doc["metric"] != objectives[0][0]:
        raise _err(src, "metric", f"{doc['metric']} is not the first objective ({objectives[0][0]}); give one of them")
    if objectives and "mode" in doc and doc["mode"] != objectives[0][1]:
        raise _err(src, "mode", f"{doc['mode']} is not the first objective's direction ({objectives[0][1]})")
    metric = objectives[0][0] if objectives else doc.get("metric", "val_auc")
    if not isinstance(metric, str) or metric not in metrics:
        raise _err(src, "metric", f"expected one of {sorted(metrics)}, got {metric!r}")
    mode = objectives[0][1] if objectives else doc.get("mode", metrics[metric])
    if not isinstance(mode, str) or mode not in ("min", "max"):
        raise _err(src, "mode", f"expected min or max, got {mode!r}")
    seed = int(_number(src, "seed", doc.get("seed", 0), integer=True))
    image_size = int(_number(src, "image_size", doc.get("image_size", 224), integer=True))
    if image_size < 32:
        raise _err(src, "image_size", f"expected >= 32, got {image_size}")
    checkpoints = doc.get("checkpoints", RETENTION[0])
    if checkpoints not in RETENTION:
        raise _err(src, "checkpoints", f"expected one of {list(RETENTION)}, got {checkpoints!r}")

    b = dict(_mapping(src, "budget", doc.get("budget", {})))
    counts = [f.name for f in dataclasses.fields(BudgetSpec) if f.name != "time_s"]
    _check_keys(src, "budget.", b, [*counts, "time"])
    time_s = parse_duration(b.pop("time"), f"{src}: budget.time") if "time" in b else None
    if time_s is not None and "trials" not in b:
        b["trials"] = None  # a time budget alone: trials are sampled until it is spent
    budget = BudgetSpec(**{k: None if v is None else int(_number(src, f"budget.{k}", v, integer=True))
                       for k, v in b.items()}, time_s=time_s)
    for k, v in dataclasses.asdict(budget).items():
        if k != "time_s" and v is not None and v < (2 if k == "reduction_factor" else 1):
            raise _err(src, f"budget.{k}", f"expected >= {2 if k == 'reduction_factor' else 1}, got {v}")
    if budget.grace_period > budget.max_epochs:
        raise _err(src, "budget.grace_period", f"{budget.grace_period} > max_epochs ({budget.max_epochs})")

    r = _mapping(src, "resources", doc.get("resources", {}))
    _check_keys(src, "resources.", r, [f.name for f in dataclasses.fields(Resources)])
    resources = Resources(**{k: float(_number(src, f"resources.{k}", v)) for k, v in r.items()})
    if resources.cpus_per_trial <= 0 or resources.gpus_per_trial < 0:
        raise _err(src, "resources", "cpus_per_trial must be > 0 and gpus_per_trial >= 0")

    shared = searchable_options()
    fixed = _mapping(src, "fixed", doc.get("fixed", {}))
    _check_keys(src, "fixed.", fixed, shared)

    archs_doc = _mapping(src, "architectures", doc.get("architectures"))
    if not archs_doc:
        raise _err(src, "architectures", "expected at least one architecture")
    archs: dict[str, dict[str, Param]] = {}
    for arch, params in archs_doc.items():
        try:
            entry = get_arch(arch)
        except UserError as e:
            raise _err(src, f"architectures.{arch}", str(e)) from None
        params = _mapping(src, f"architectures.{arch}", params or {})
        _check_keys(src, f"architectures.{arch}.", params, set(shared) | set(entry.hparams))
        archs[arch] = {n: _param(src, f"architectures.{arch}.{n}", n, s) for n, s in params.items()}
        for p in archs[arch].values():
            _check_range(src, f"architectures.{arch}.{p.name}", arch, p)

    valid_extra = _paths(src, doc["valid_extra"], base) if doc.get("valid_extra") is not None else ()
    dtypes = TrainConfig.__dataclass_fields__["cache_dtype"].metadata["choices"]
    cache_dtype = doc.get("cache_dtype", "float32")
    if cache_dtype not in dtypes:
        raise _err(src, "cache_dtype", f"expected one of {', '.join(dtypes)}, got {cache_dtype!r}")
    space = SearchSpace(src, metric, mode, seed, image_size, budget, resources, fixed, archs, valid_extra,
                        cache_dtype=cache_dtype, checkpoints=checkpoints, objectives=objectives,
                        sampler=parse_sampler(src, doc.get("sampler", "tpe")),
                        latency=measuring(parse_latency(src, doc.get("latency", {})), objectives),
                        prep=_prep(src, doc))
    for arch in archs:  # the fixed part must itself be a valid training config
        try:
            TrainConfig.from_dict({k: v for k, v in space.base_config(arch).items()})
        except (UserError, TypeError) as e:
            raise _err(src, f"architectures.{arch}", f"invalid fixed values: {e}") from None
        _check_choices(src, space, arch)
    return space


def _prep(src: str, doc: dict[str, Any]) -> Preprocess:
    """The `video:` and `faces:` blocks; a problem is one line naming the block."""
    for key in ("video", "faces"):
        try:
            Preprocess.parse(**{key: doc.get(key)})
        except (UserError, TypeError) as e:
            raise _err(src, key, str(e).removeprefix(f"{key}: ")) from None
    return Preprocess.parse(doc.get("video"), doc.get("faces"))


def _check_choices(src: str, space: SearchSpace, arch: str) -> None:
    """Each choice of a sampled training option (input, resize, augment...) must make a valid config with the
    fixed part: an unknown input or resize mode is one line at load time, not a failed trial."""
    base = space.base_config(arch)
    sampled = [p for p in space.architectures[arch].values() if p.kind == HParamKind.CATEGORICAL and p.name in
               searchable_options()]
    for i, p in enumerate(sampled):  # each choice, and each pair of choices (resize crop with augment crop)
        for q in [p, *sampled[i + 1:]]:
            for c, d in ((c, d) for c in p.choices for d in q.choices):
                try:
                    TrainConfig.from_dict({**base, q.name: d, p.name: c})
                except (UserError, TypeError) as e:
                    raise _err(src, f"architectures.{arch}.{p.name}", str(e)) from None


def load_space(path: Path) -> SearchSpace:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"search space file not found: {path}")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file (expected YAML)") from None
    return parse_space(doc, str(path), path.parent)
