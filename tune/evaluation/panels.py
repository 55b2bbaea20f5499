"""Grad-CAM panels' data: where each winner looked, on a few images chosen by rule.

For the HTML report (finalize computes one panel per exported winner on the test split, which it has
in memory anyway: no other module reads that split) and for `evaluate` (one panel per model over
its clean images of every source). A panel has four groups of at most PER_GROUP images each, so the
report stays small whatever the test set's size:
- the most confident fakes and the most confident reals (correct, furthest from the threshold);
- the worst mistakes: fakes called real (lowest P(fake) first) and reals called fake (highest first).
The choice is a function of the labels, the scores and the model's threshold (ties: file order), so
the same run draws the same images. Each image is the model's own input with its Grad-CAM map
(tune/models/explain.py) and its P(fake). tune/reports/campanel.py draws a `Panel`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tune import FAKE, REAL, inference
from tune.models import explain
from tune.training.records import PREDICTIONS, read_predictions

if TYPE_CHECKING:

    from tune.data.images import ImageSet
    from tune.data.sources import Scored
    from tune.inference import LoadedModel
    from tune.models.explain import Maps
    from tune.runs.files import Comparison
    from tune.runs.layout import Run

PER_GROUP = 4
GROUPS = ("most confident fakes", "most confident reals", "fakes called real (worst first)",
          "reals called fake (worst first)")
Images = Callable[["np.ndarray"], "np.ndarray"]  # positions → uint8 model inputs (n, 3, S, S)


@dataclass
class Panel:
    """One model's panel: the images of each group, as the model saw them, with their maps (or why there are none)."""

    title: str
    threshold: float
    members: list[list[tuple[str, float]]] = field(default_factory=list)  # per group: (image path, P(fake))
    x: np.ndarray | None = None  # every member's model input, uint8 (n, 3, S, S), in group order
    maps: Maps | None = None  # their Grad-CAM maps
    no_maps: str = ""  # why this model has no maps (no target layer): the panel says so instead
    error: Exception | None = None  # what went wrong computing it: the renderer reports it as a failed plot


def pick(y: np.ndarray, p: np.ndarray, threshold: float, k: int = PER_GROUP) -> list[np.ndarray]:
    """Positions of the images in each of GROUPS, at most k each. Called Fake means p >= threshold
    (as LoadedModel.label); a stable sort keeps file order among equal scores."""
    pos, fake = np.arange(len(y)), p >= threshold
    rules = (((y == FAKE) & fake, -p), ((y == REAL) & ~fake, p), ((y == FAKE) & ~fake, p), ((y == REAL) & fake, -p))
    return [pos[keep][np.argsort(key[keep], kind="stable")][:k] for keep, key in rules]


def panel(loaded: LoadedModel, y: np.ndarray, p: np.ndarray, names: list[str], images: Images, title: str) -> Panel:
    """The four groups of one model, their inputs and their maps. A model that cannot be explained gets a
    panel that says why (as every plot of the project that cannot be drawn)."""
    groups = pick(y, p, loaded.threshold)
    members = [[(names[int(i)], float(p[int(i)])) for i in g] for g in groups]
    chosen = np.concatenate(groups)
    x = images(chosen) if len(chosen) else None
    try:
        maps = explain.gradcam(loaded.model, loaded.arch, x) if x is not None else None
    except explain.NoTargetLayer as e:
        return Panel(title, loaded.threshold, members, no_maps=str(e))
    return Panel(title, loaded.threshold, members, x, maps)


def finalize_panels(run: Run, cmp: Comparison, test: ImageSet, log: Callable[[str], None]) -> dict[str, Panel]:
    """arch -> the panel of its exported winner on the test split (the report shows them); a panel that
    fails is logged and left out, because a picture must not lose the finished numbers."""
    out = {}
    for row in cmp.tuned:
        try:
            loaded = inference.load(run.model(row.arch))
            _, y, p = read_predictions(run.finalize(row.name, row.chosen_seed) / PREDICTIONS)
            out[row.arch] = panel(loaded, y, p, test.paths, lambda idx: test.x[idx],
                                  f"{row.arch} (seed {row.chosen_seed}) on the test split, {len(y)} images")
        except Exception as e:  # noqa: BLE001 - a picture must not lose the finished numbers
            log(f"warning: Grad-CAM panel of {row.arch} failed: {type(e).__name__}: {e}")
    return out


def evaluation_panels(models: dict[str, LoadedModel], scored: dict[str, Scored], condition: str) -> dict[str, Panel]:
    """evaluate's panels, by plot name: one per model over every source's images under `condition`. One that
    fails keeps its error, so the plot is reported as failed where the other plots are."""
    y = np.concatenate([sc.y for sc in scored.values()])
    paths = [f for sc in scored.values() for f in sc.paths]
    out = {}
    for name, m in models.items():
        key = f"cam_{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}"
        title = f"{name}: {len(y)} images of {len(scored)} source(s), {condition}"
        try:
            p = np.concatenate([sc.p[name, condition] for sc in scored.values()])
            out[key] = panel(m, y, p, paths,
                             lambda idx, m=m: np.stack([m.decode(Path(paths[i])) for i in idx]), title)
        except Exception as e:  # noqa: BLE001 - a plot is a view of numbers already computed
            out[key] = Panel(title, m.threshold, error=e)
    return out
