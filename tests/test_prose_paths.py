"""Paths in prose stay true: every repository path `tune/...` that a docstring, a comment, README.md or a
docs/ page names must exist (a file or a folder).

Scanned: the docstrings and comments of `tune/**/*.py`, `tests/*.py` and `benchmarks/*.py`, the comments of
`benchmarks/*.sh`, and all of README.md and `docs/*.md`. A name is a path when it starts with `tune/` after
a space, a quote, a bracket or a backquote (so `~/.cache/deepfake-tune/...` is not one); trailing sentence
punctuation is dropped. Placeholders are skipped: a path holding a capital letter (`tune/cli/NAME.py`),
`*`, `{`, `<` or `...`. Code is not scanned: a wrong path there fails where it is used.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PATH_RE = re.compile(r"(?<![\w./~-])tune/[\w./*{}<>-]*")
PLACEHOLDER = re.compile(r"[A-Z*{<]|\.\.\.")


def python_prose(source: str) -> list[tuple[int, str]]:
    """(line, text) of every docstring and comment in a Python source."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                out.append((body[0].lineno, body[0].value.value))
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out.append((tok.start[0], tok.string))
    return out


def shell_prose(source: str) -> list[tuple[int, str]]:
    return [(n, line[line.index("#"):]) for n, line in enumerate(source.splitlines(), 1) if "#" in line]


def text_prose(source: str) -> list[tuple[int, str]]:
    return list(enumerate(source.splitlines(), 1))


def scanned_files() -> list[Path]:
    files = sorted((ROOT / "tune").rglob("*.py")) + sorted((ROOT / "tests").glob("*.py"))
    files += sorted(p for p in (ROOT / "benchmarks").glob("*") if p.is_file() and p.suffix in (".py", ".sh"))
    return files + [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))


def prose(path: Path) -> list[tuple[int, str]]:
    source = path.read_text(encoding="utf-8")
    if path.suffix == ".py":
        return python_prose(source)
    if path.suffix == ".sh":
        return shell_prose(source)
    return text_prose(source)


def paths_named(text: str) -> list[str]:
    """The repository paths `tune/...` a piece of prose names, placeholders left out."""
    names = []
    for match in PATH_RE.finditer(text):
        name = match.group(0)
        if PLACEHOLDER.search(name):
            continue
        names.append(name.rstrip(".,;:-"))
    return names


def stale_mentions() -> list[str]:
    stale = []
    for path in scanned_files():
        for lineno, text in prose(path):
            for offset, line in enumerate(text.splitlines()):
                for name in paths_named(line):
                    if not (ROOT / name).exists():
                        stale.append(f"{path.relative_to(ROOT)}:{lineno + offset}: {name}")
    return stale


def test_the_rule_finds_paths_and_skips_placeholders():
    text = ("see tune/search/driver.py, `tune/metrics/classification.py`: and (tune/cli/NAME.py) or tune/... or "
            "tune/*/x.py; not ~/.cache/deepfake-tune/x nor ray.tune/x; the folder tune/search.")
    assert paths_named(text) == ["tune/search/driver.py", "tune/metrics/classification.py", "tune/search"]


def test_the_scan_sees_docstrings_and_comments_only():
    source = '"""Module: tune/a.py."""\nX = "tune/b.py"\n\n\ndef f():\n    """tune/c.py"""\n    return 1  # tune/d.py\n'
    found = [name for _, text in python_prose(source) for name in paths_named(text)]
    assert sorted(found) == ["tune/a.py", "tune/c.py", "tune/d.py"]


def test_every_path_named_in_prose_exists():
    stale = stale_mentions()
    assert not stale, f"{len(stale)} mention(s) of paths that do not exist:\n" + "\n".join(stale)
