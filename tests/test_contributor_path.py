"""docs/development.md's "A new contributor's path" names real modules: each `tune/....py` it names imports.

The section says where to add an architecture, a metric, a report section and a CLI command; a module that
moves without the page following fails here. Placeholders (a capital letter: `tune/cli/NAME.py`) are skipped.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADING = "## A new contributor's path"


def section() -> str:
    text = (ROOT / "docs" / "development.md").read_text(encoding="utf-8")
    assert HEADING in text, f"docs/development.md has no {HEADING!r} section"
    body = text.split(HEADING, 1)[1]
    return re.split(r"^## ", body, maxsplit=1, flags=re.M)[0]


def modules_named(text: str) -> list[str]:
    """The importable module of every `tune/....py` path in the text, in order, without repeats."""
    paths = [p for p in re.findall(r"(?<![\w./-])tune/[\w/]+\.py\b", text) if p == p.lower()]
    names = [p[: -len(".py")].replace("/", ".") for p in paths]
    return list(dict.fromkeys(n.removesuffix(".__init__") for n in names))


def test_the_section_names_the_module_for_each_thing_to_add():
    named = modules_named(section())
    for module in ("tune.models.registry", "tune.metrics.classification", "tune.reports.sections", "tune.cli"):
        assert module in named, f"the contributor's path no longer names {module}"
    assert "tune/cli/NAME.py" in section()


def test_every_module_the_section_names_imports():
    named = modules_named(section())
    assert named
    for module in named:
        importlib.import_module(module)


def test_the_names_it_tells_a_contributor_to_extend_exist():
    registry = importlib.import_module("tune.models.registry")
    classification = importlib.import_module("tune.metrics.classification")
    html = importlib.import_module("tune.reports.html")
    sections = importlib.import_module("tune.reports.sections")
    cli = importlib.import_module("tune.cli")
    assert callable(registry.register_arch) and "efficientnet_lite0" in registry.REGISTRY
    assert isinstance(classification.METRICS, dict) and classification.METRICS
    assert callable(sections.verdict) and callable(sections.dataset) and sections.Context
    assert any(build is sections.verdict for _, _, build, _ in html.SECTIONS)
    archs = importlib.import_module("tune.cli.archs")
    assert archs in cli.COMMANDS and callable(archs.add_parser) and callable(archs.run)
