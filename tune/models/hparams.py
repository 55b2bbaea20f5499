"""The kinds of hyperparameter, declared once: an architecture's HParam (tune.models.detector) and a search
space's Param (tune.search.space) both take theirs from here. Kept apart from the models, so a reader of run.json
(the leaderboard, finalize) names a kind without importing torch."""

from __future__ import annotations

from enum import StrEnum


class HParamKind(StrEnum):
    """A hyperparameter's kind: one vocabulary for the two places that declare one. An architecture's HParam says
    which values it takes (VALUES); a search space's Param (tune.search.space) says how a trial gets one (SAMPLED,
    or FIXED). The values are the words a space file and run.json use (`type: loguniform`)."""

    INT = "int"  # an integer in [low, high]; a space samples it uniformly
    FLOAT = "float"  # a number in [low, high]
    WIDTHS = "widths"  # hidden layer sizes, e.g. 256,64
    WEIGHTS = "weights"  # a weights source: hub, packaged, none, file:PATH
    UNIFORM = "uniform"  # a number sampled uniformly in [low, high]
    LOGUNIFORM = "loguniform"  # a positive number sampled uniformly in log space
    CATEGORICAL = "categorical"  # one of its choices
    FIXED = "fixed"  # one value, set by the space file


VALUES = (HParamKind.INT, HParamKind.FLOAT, HParamKind.WIDTHS, HParamKind.WEIGHTS)  # an HParam's kinds
SAMPLED = (HParamKind.LOGUNIFORM, HParamKind.UNIFORM, HParamKind.INT, HParamKind.CATEGORICAL)  # a space's `type:`
