"""The package's shape: stages as packages whose imports only point down, no import circles (lazy imports
included), imports of the package's own modules at the top of each module, each module a readable size, and names
that one module owns quoted nowhere else."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import tune

SRC = Path(tune.__file__).parent
# Bottom to top: a module may import its own package and the ones before it, never one after it.
LAYERS = ["core", "metrics", "data", "models", "training", "inference", "runs", "search", "evaluation", "reports",
          "serving", "cli"]
MAX_LINES = 400
MAX_TOP_LEVEL = 6
# The only imports of tune modules inside functions: (module file, the tune module it imports, why). Each of these
# modules imports ray at its top, and Ray reads the environment that quiet_ray and loopback_only
# (tune.search.cluster) set only as it is imported; importing them at the importer's top would also bring ray into
# every command's start-up (`python -m tune --help`). Third-party heavy imports (ray, onnxruntime, matplotlib...)
# may stay inside functions with a comment; they are not counted here.
RAY_AFTER_SETTINGS = "imports ray at its top: only after quiet_ray/loopback_only, and not at start-up"
LOCAL_TUNE_IMPORTS = [
    ("cli/serve.py", "tune.serving.app", RAY_AFTER_SETTINGS + " (and fastapi)"),
    ("search/driver.py", "tune.search.progress", RAY_AFTER_SETTINGS),
    ("search/driver.py", "tune.search.retention", RAY_AFTER_SETTINGS),
    ("search/driver.py", "tune.search.scheduler", RAY_AFTER_SETTINGS),
    ("search/driver.py", "tune.search.searcher", RAY_AFTER_SETTINGS),  # make_tuner
    ("search/driver.py", "tune.search.searcher", RAY_AFTER_SETTINGS),  # run_search: studies_at
]


def modules() -> dict[str, str]:
    """tune.x.y -> its source, for every module of the package."""
    out = {}
    for p in SRC.rglob("*.py"):
        name = ".".join(p.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__")
        out[name] = p.read_text()
    return out


def imports() -> dict[str, set[str]]:
    """Every tune module → the tune modules it imports anywhere in its text (top level or inside functions)."""
    mods = modules()
    graph = {}
    for name, src in mods.items():
        deps = set(re.findall(r"from (tune(?:\.\w+)*) import", src))
        deps |= set(re.findall(r"^\s*import (tune(?:\.\w+)+)", src, re.M))
        for package, names in re.findall(r"from (tune(?:\.\w+)*) import \(?([\w, \n]+)\)?", src):
            deps |= {f"{package}.{n.strip().split(' as ')[0]}" for n in names.split(",") if n.strip()}
        graph[name] = {d for d in deps if d in mods and d != name and not name.startswith(d + ".")}
    return graph


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "tune"


def test_no_import_circles() -> None:
    graph = imports()
    assert graph["tune.cli"] and graph["tune.evaluation.finalize"]  # the scan sees imports at all
    # ... and imports inside functions (the driver reaches the searcher only there), which point down like the others
    assert "tune.search.searcher" in graph["tune.search.driver"]

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for d in graph[start]:
            if d == target or (d not in seen and reaches(d, target, seen | {d})):
                return True
        return False

    circles = sorted(m for m in graph if reaches(m, m, {m}))
    assert not circles, {m: sorted(graph[m]) for m in circles}


def test_imports_only_point_down_the_layers() -> None:
    graph = imports()
    assert {layer(m) for m in graph} - {"tune", "__main__"} == set(LAYERS)  # every stage is a declared layer
    up = sorted((m, d) for m, deps in graph.items() for d in deps
                if layer(m) in LAYERS and layer(d) in LAYERS and LAYERS.index(layer(d)) > LAYERS.index(layer(m)))
    assert not up, up


def local_tune_imports() -> list[tuple[str, str]]:
    """(module file, imported tune module) for every import of a tune module inside a function, in file order."""
    known, found = modules(), []
    for p in sorted(SRC.rglob("*.py")):
        name = ".".join(p.relative_to(SRC.parent).with_suffix("").parts)
        for func in ast.walk(ast.parse(p.read_text())):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                targets: list[str] = []
                if isinstance(node, ast.Import):
                    targets = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    base = node.module or ""
                    if node.level:  # relative: resolved against this module's package
                        base = ".".join([*name.split(".")[:-node.level], *([base] if base else [])])
                    targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
                for t in dict.fromkeys(targets):
                    if t == "tune" or t.startswith("tune."):
                        found.append((node.lineno, str(p.relative_to(SRC)), t))
    # ast.walk visits a nested function's imports twice (as the outer's and its own); each statement counts once
    return [(path, module) for _, path, module in sorted(set(found), key=lambda f: (f[1], f[0]))]


def test_tune_modules_are_imported_at_the_top() -> None:
    """A module's imports of other tune modules sit at its top, where a reader sees what it depends on; inside a
    function only the listed exceptions, each with its reason. A new one fails here: move it to the top, and where
    that makes a circle, move the code to the module that owns it instead of hiding the import."""
    assert local_tune_imports() == [(path, module) for path, module, _ in LOCAL_TUNE_IMPORTS]


def test_every_module_is_a_readable_size_and_the_top_level_is_small() -> None:
    long = {m: n for m, src in modules().items() if (n := len(src.splitlines())) > MAX_LINES}
    assert not long, long
    top = sorted(p.name for p in SRC.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL, top


def test_command_modules_never_import_the_cli() -> None:
    graph = imports()
    assert sorted(m for m, deps in graph.items() if any(layer(d) == "cli" for d in deps)
                  and layer(m) != "cli") == ["tune.__main__"]


def test_training_folder_file_names_are_declared_once() -> None:
    """best.pth, history.csv, record.json, predictions.csv and valid_predictions.csv are quoted in code only in
    training/records.py; every other module looks them up there (help text and docstrings may name them)."""
    from tune.training.records import HISTORY, PREDICTIONS, RECORD, VALID_PREDICTIONS, WEIGHTS

    names = (WEIGHTS, HISTORY, RECORD, PREDICTIONS, VALID_PREDICTIONS)
    quoted = re.compile("([\"'])(" + "|".join(map(re.escape, names)) + ")\\1")
    owner = SRC / "training" / "records.py"
    found = sorted(str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if p != owner and quoted.search(p.read_text()))
    assert found == [], found


def test_run_file_names_are_declared_once() -> None:
    """run.json (tune.runs.layout), comparison.json and evaluation.json (tune.runs.files) are quoted in code only by
    the modules that read and write them as dataclasses; every other module asks those for a path or a record."""
    quoted = re.compile(r"([\"'])(run\.json|comparison\.json|evaluation\.json)\1")  # a string literal, not prose
    owners = {SRC / "runs" / "layout.py", SRC / "runs" / "files.py"}
    found = sorted(str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
                   if p not in owners and quoted.search(p.read_text()))
    assert found == [], found


def test_one_bootstrap_engine() -> None:
    """Finalize, evaluate and the model card score through tune.metrics.bootstrap; nothing else bootstraps."""
    engines = sorted(f"{p.relative_to(SRC)}:{m.group(0)}" for p in SRC.rglob("*.py")
                     for m in re.finditer(r"def \w*bootstrap\w*", p.read_text()))
    assert engines == ["metrics/bootstrap.py:def bootstrap"], engines
