"""Data: discovering and decoding a dataset's splits (images.py), training views (augment.py), evaluate's
sources and perturbations, held-out sources, and the built-in dataset (builtin.py)."""

import importlib
from typing import Any

_PICKLED = {"ImageSet": "tune.data.images", "LiveImages": "tune.data.images"}


def __getattr__(name: str) -> Any:
    """The decoded splits, under the names Ray pickled them as (in a search's trainable data) before the layout."""
    if name in _PICKLED:
        return getattr(importlib.import_module(_PICKLED[name]), name)
    raise AttributeError(f"module 'tune.data' has no attribute {name!r}")
