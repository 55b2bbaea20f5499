"""Panels of class-activation maps: where each winner looked, on a few images chosen by rule.

For the HTML report (finalize draws one panel per exported winner on the test split, which it has
in memory anyway: no other module reads that split) and for `evaluate` (one panel per model over
its clean images of every source). A panel has four rows of at most PER_GROUP images each, so the
report stays small whatever the test set's size:
- the most confident fakes and the most confident reals (correct, furthest from the threshold);
- the worst mistakes: fakes called real (lowest P(fake) first) and reals called fake (highest first).
The choice is a function of the labels, the scores and the model's threshold (ties: file order), so
the same run draws the same images. Each image is the model's own input with its Grad-CAM map
(tune/models/explain.py) and its P(fake).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tune import FAKE, REAL

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.figure import Figure

    from tune.data.images import ImageSet
    from tune.data.sources import Scored
    from tune.inference import LoadedModel
    from tune.runs.files import Comparison
    from tune.runs.layout import Run

PER_GROUP = 4
GROUPS = ("most confident fakes", "most confident reals", "fakes called real (worst first)",
          "reals called fake (worst first)")
Images = Callable[["np.ndarray"], "np.ndarray"]  # positions → uint8 model inputs (n, 3, S, S)


def pick(y: np.ndarray, p: np.ndarray, threshold: float, k: int = PER_GROUP) -> list[np.ndarray]:
    """Positions of the images in each of GROUPS, at most k each. Called Fake means p >= threshold
    (as LoadedModel.label); a stable sort keeps file order among equal scores."""
    import numpy as np

    pos, fake = np.arange(len(y)), p >= threshold
    rules = (((y == FAKE) & fake, -p), ((y == REAL) & ~fake, p), ((y == FAKE) & ~fake, p), ((y == REAL) & fake, -p))
    return [pos[keep][np.argsort(key[keep], kind="stable")][:k] for keep, key in rules]


def panel(loaded: LoadedModel, y: np.ndarray, p: np.ndarray, names: list[str], images: Images,
          title: str) -> Figure:
    """The four groups of one model as a figure: a row per group, each image under its map. A model that
    cannot be explained gets a figure that says why (as every plot of the project that cannot be drawn)."""
    import numpy as np
    from matplotlib.figure import Figure

    from tune.models import explain
    from tune.reports.figures import note

    groups = pick(y, p, loaded.threshold)
    chosen = np.concatenate(groups)
    x = images(chosen) if len(chosen) else None
    try:
        maps = explain.gradcam(loaded.model, loaded.arch, x) if x is not None else None
    except explain.NoTargetLayer as e:
        fig = Figure(figsize=(8, 1.5))
        note(fig.add_subplot(), f"{title}: no class-activation maps. {e}")
        return fig
    fig = Figure(figsize=(1.9 * PER_GROUP + 1.0, 2.15 * len(GROUPS)), layout="constrained")
    axes = fig.subplots(len(GROUPS), PER_GROUP, squeeze=False)
    k = 0
    for row, (group, members) in enumerate(zip(GROUPS, groups)):
        axes[row][0].set_title(f"{group} ({len(members)})", loc="left", fontsize=9, fontweight="bold")
        for col, ax in enumerate(axes[row]):
            ax.set_xticks([])
            ax.set_yticks([])
            if col >= len(members):
                ax.set_frame_on(False)
                if col == 0:
                    ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes, color="gray")
                continue
            assert maps is not None and x is not None
            i = int(members[col])
            ax.imshow(explain.overlay(x[k], maps.cam[k]))
            ax.set_xlabel(f"{Path(names[i]).name[:22]}\nP(fake) {p[i]:.3f}", fontsize=7)
            k += 1
    how = f"{explain.METHOD} at {maps.layer} ({maps.grid[0]}x{maps.grid[1]} cells)" if maps else explain.METHOD
    fig.suptitle(f"{title}\n{how}; threshold {loaded.threshold:.3f}", fontsize=9)
    return fig


def finalize_panels(run: Run, cmp: Comparison, test: ImageSet, log: Callable[[str], None]) -> list[Path]:
    """One panel per exported winner on the test split, into the run's plots/ (the report shows them)."""
    from tune import inference
    from tune.reports.figures import save
    from tune.training.records import PREDICTIONS, read_predictions

    written = []
    for row in cmp.tuned:
        try:
            loaded = inference.load(run.model(row["arch"]))
            _, y, p = read_predictions(run.finalize(row["name"], row["chosen_seed"]) / PREDICTIONS)
            fig = panel(loaded, y, p, test.paths, lambda idx: test.x[idx],
                        f"{row['arch']} (seed {row['chosen_seed']}) on the test split, {len(y)} images")
            written.append(save(fig, run.cam_panel(row["arch"])))
        except Exception as e:  # noqa: BLE001 - a picture must not lose the finished numbers
            log(f"warning: Grad-CAM panel of {row['arch']} failed: {type(e).__name__}: {e}")
    return written


def evaluation_panels(models: dict[str, LoadedModel], scored: dict[str, Scored],
                      condition: str) -> dict[str, Callable[[Path], None]]:
    """evaluate's plot jobs: one panel per model over every source's images under `condition`."""
    import numpy as np

    from tune.reports.figures import save

    y = np.concatenate([sc.y for sc in scored.values()])
    paths = [f for sc in scored.values() for f in sc.paths]

    def job(name: str, m: LoadedModel) -> Callable[[Path], None]:
        def draw(path: Path) -> None:
            p = np.concatenate([sc.p[name, condition] for sc in scored.values()])
            title = f"{name}: {len(y)} images of {len(scored)} source(s), {condition}"
            save(panel(m, y, p, paths, lambda idx: np.stack([m.decode(Path(paths[i])) for i in idx]), title), path)
        return draw

    return {f"cam_{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}": job(name, m) for name, m in models.items()}
