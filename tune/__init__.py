"""Hyperparameter search for deepfake image detectors (Ray Tune + Optuna + ASHA).

The package is laid out by stage, each stage a sub-package that imports only the ones before it:
core, metrics, data, models, training, runs, search, reports, evaluation, serving, cli (docs/development.md, "Where
things are"; tests/test_layout.py checks the order).
"""

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

# Label convention, used everywhere: Fake is the positive class, so precision and
# recall are about catching fakes.
CLASSES: tuple[str, str] = ("Real", "Fake")
FAKE: int = 1
REAL: int = 0

# Modules under the names they had before the layout by stage. Ray pickles a search's searcher, scheduler,
# progress callback and budget by qualified name into the experiment, and `search --resume` of a run
# started then unpickles them: these names lead to the modules as they are now. (The trainable and its data,
# pickled as tune.search.* and tune.data.*, are found by those packages' __getattr__.)
MOVED = {"tune.searcher": "tune.search.searcher", "tune.scheduler": "tune.search.scheduler",
         "tune.progress": "tune.search.progress", "tune.budget": "tune.search.budget",
         "tune.space": "tune.search.space"}


class _Moved(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name: str, path: object, target: object = None) -> importlib.machinery.ModuleSpec | None:
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> object:
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module: object) -> None:
        pass  # the module is the one it moved to, already executed


sys.meta_path.append(_Moved())
