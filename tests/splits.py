"""Watch which dataset splits the package reads, and from where (the test split belongs to finalize alone)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

# Import every module that may hold its own `load_split` name, so the spy replaces all of them.
import tune.cli
import tune.data.images
import tune.evaluation.finalize
import tune.evaluation.reproduce
import tune.reports.figures
import tune.runs.info
import tune.search.driver
import tune.serving.predict


def spy_split_reads(mp: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Replace load_split wherever a tune module holds it; record (calling module, split)."""
    real = tune.data.images.load_split
    calls: list[tuple[str, str]] = []

    def spy(root: Path, split: str, *a: Any, **k: Any) -> Any:
        calls.append((sys._getframe(1).f_globals["__name__"], split))
        return real(root, split, *a, **k)

    for name, mod in list(sys.modules.items()):
        if (name == "tune" or name.startswith("tune.")) and getattr(mod, "load_split", None) is real:
            mp.setattr(mod, "load_split", spy)
    return calls
