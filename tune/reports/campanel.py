"""Grad-CAM panels drawn: a row per group of images (tune/evaluation/panels.py chose them and computed their
maps), each image under its map with its file name and P(fake)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tune.evaluation.panels import GROUPS, PER_GROUP, Panel
from tune.models import explain
from tune.reports.figures import note, save

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from tune.runs.layout import Run


def figure(pnl: Panel) -> Figure:
    """The panel as a figure; one whose computing failed raises that error (the caller logs it)."""
    from matplotlib.figure import Figure  # heavy: matplotlib only when a figure is drawn

    if pnl.error is not None:
        raise pnl.error
    if pnl.no_maps:
        fig = Figure(figsize=(8, 1.5))
        note(fig.add_subplot(), f"{pnl.title}: no class-activation maps. {pnl.no_maps}")
        return fig
    fig = Figure(figsize=(1.9 * PER_GROUP + 1.0, 2.15 * len(GROUPS)), layout="constrained")
    axes = fig.subplots(len(GROUPS), PER_GROUP, squeeze=False)
    k = 0
    for row, (group, members) in enumerate(zip(GROUPS, pnl.members)):
        axes[row][0].set_title(f"{group} ({len(members)})", loc="left", fontsize=9, fontweight="bold")
        for col, ax in enumerate(axes[row]):
            ax.set_xticks([])
            ax.set_yticks([])
            if col >= len(members):
                ax.set_frame_on(False)
                if col == 0:
                    ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes, color="gray")
                continue
            assert pnl.maps is not None and pnl.x is not None
            name, p = members[col]
            ax.imshow(explain.overlay(pnl.x[k], pnl.maps.cam[k]))
            ax.set_xlabel(f"{Path(name).name[:22]}\nP(fake) {p:.3f}", fontsize=7)
            k += 1
    maps = pnl.maps
    how = f"{explain.METHOD} at {maps.layer} ({maps.grid[0]}x{maps.grid[1]} cells)" if maps else explain.METHOD
    fig.suptitle(f"{pnl.title}\n{how}; threshold {pnl.threshold:.3f}", fontsize=9)
    return fig


def save_panels(run: Run, panels: dict[str, Panel], log: Callable[[str], None]) -> list[Path]:
    """finalize's panels (arch -> panel) into the run's plots/; one that fails is logged and skipped."""
    written = []
    for arch, pnl in panels.items():
        try:
            written.append(save(figure(pnl), run.cam_panel(arch)))
        except Exception as e:  # noqa: BLE001 - a picture must not lose the finished numbers
            log(f"warning: Grad-CAM panel of {arch} failed: {type(e).__name__}: {e}")
    return written


def plot_jobs(panels: dict[str, Panel]) -> dict[str, Callable[[Path], None]]:
    """evaluate's panels as plot jobs (NAME -> draw(path)) beside its other plots."""
    def job(pnl: Panel) -> Callable[[Path], None]:
        def draw(path: Path) -> None:
            save(figure(pnl), path)
        return draw

    return {name: job(pnl) for name, pnl in panels.items()}
