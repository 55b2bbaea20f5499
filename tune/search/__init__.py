"""The search: a space, a budget, one Tuner whose searcher keeps a study per architecture and whose
scheduler runs an ASHA per architecture, progress, the trainable and the driver (driver.py)."""

import importlib
from typing import Any

_PICKLED = {"run_trial": "tune.search.driver", "TrialData": "tune.search.driver", "trial_dirname": "tune.search.driver"}


def __getattr__(name: str) -> Any:
    """The trainable and its data, under the names Ray pickled them as before the layout by stage."""
    if name in _PICKLED:
        return getattr(importlib.import_module(_PICKLED[name]), name)
    raise AttributeError(f"module 'tune.search' has no attribute {name!r}")
