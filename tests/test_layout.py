"""The package's shape: no import circles (lazy imports included), each module a readable size."""

from __future__ import annotations

import re
from pathlib import Path

import tune

SRC = Path(tune.__file__).parent


def imports() -> dict[str, set[str]]:
    """Every tune module → the tune modules it imports anywhere in its text (top level or inside functions)."""
    mods = {p.stem: p.read_text() for p in SRC.glob("*.py")}
    graph = {}
    for name, src in mods.items():
        deps = set(re.findall(r"from tune\.(\w+) import", src)) | set(re.findall(r"import tune\.(\w+)", src))
        for group in re.findall(r"from tune import \(?([\w, \n]+)\)?", src):
            deps |= {n.strip().split(" as ")[0] for n in group.split(",") if n.strip()}
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def test_no_import_circles() -> None:
    graph = imports()
    assert graph["cli"] and graph["finalize"]  # the scan sees imports at all

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for d in graph[start]:
            if d == target or (d not in seen and reaches(d, target, seen | {d})):
                return True
        return False

    circles = sorted(m for m in graph if reaches(m, m, {m}))
    assert not circles, {m: sorted(graph[m]) for m in circles}


def test_command_modules_never_import_the_cli() -> None:
    assert [m for m, deps in imports().items() if "cli" in deps] == ["__main__"]


def test_training_folder_file_names_are_declared_once() -> None:
    """best.pth, history.csv, record.json, predictions.csv and valid_predictions.csv are quoted in code only in
    runs.py; every other module looks them up there (help text and docstrings may name them in prose)."""
    from tune.training.records import HISTORY, PREDICTIONS, RECORD, VALID_PREDICTIONS, WEIGHTS

    names = (WEIGHTS, HISTORY, RECORD, PREDICTIONS, VALID_PREDICTIONS)
    quoted = re.compile("[\"'](" + "|".join(map(re.escape, names)) + ")[\"']")
    found = sorted(p.name for p in SRC.glob("*.py") if p.name != "runs.py" and quoted.search(p.read_text()))
    assert found == [], found
