"""The Ray Tune trainable: a trial turns its sampled config into a TrainConfig and calls
tune.training.loop.fit, with a hook that reports each epoch to Ray Tune and checkpoints it. Thin on purpose:
training is tune/training/, what to try and when to stop are the search's (tune/search/driver.py).

A time budget's deadline reaches the trial in TrialData, never in its config: the config is pickled into the
experiment, and --resume gives the deadline anew (tune/search/budget.py). Past it, fit drops the epoch under way
(tune/training/deadline.py) and the trial makes one last report that is no epoch (`CUT_SHORT`), saying so.
"""

from __future__ import annotations

import functools
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tune.data.images import ImageSet
from tune.metrics.costs import LatencySettings
from tune.runs.trials import CUT_SHORT, SCORE, kept_score
from tune.training.config import TrainConfig
from tune.training.deadline import OUT_OF_TIME, until
from tune.training.latency import measure
from tune.training.loop import fit
from tune.training.store import set_budget


@dataclass
class TrialData:
    """What every trial needs besides its config; Ray puts it in the object store once per search. Small: the
    splits pickle as their decoded cache's path, which each trial maps (tune/data/mapped.py)."""

    train: ImageSet
    valid: ImageSet
    metric: str
    mode: str
    threads: int
    cache_dir: str | None
    use_cache: bool = True
    extra: list[ImageSet] = field(default_factory=list)  # held-out validation sources: scored, never trained on
    cache_gb: float | None = None  # the feature-cache budget of the node a trial runs on
    serving: LatencySettings | None = None  # how the kept model's serving costs are measured (None: not measured)
    kept_metrics: tuple[str, ...] = ()  # further objectives that are metrics (reported at the kept epoch)
    crop: tuple[ImageSet, ImageSet, list[ImageSet]] | None = None  # train, valid, held-out as resize crop has them
    deadline: float | None = None  # the time budget's end, wall clock (time.time), the driver's: None without one


def run_trial(config: dict[str, Any], data: TrialData) -> None:
    """The Ray Tune trainable (function API)."""
    import ray  # heavy: imported in the Ray worker that runs the trial, not by whoever imports this module
    from ray import tune as ray_tune

    set_budget(data.cache_gb)  # a worker of a cluster node did not inherit the driver's environment
    node_id = ray.get_runtime_context().get_node_id()  # which machine ran it (shown in cluster runs)
    cfg = TrainConfig.from_dict({**config, "threads": data.threads, "use_cache": data.use_cache})
    resume = None
    ckpt = ray_tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            resume = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=True)
        if resume.get("finished"):
            return  # slimmed by keep_best: the trial had finished before a crash let a snapshot call it running
    rows = list(resume["history"]) if resume else []

    def kept() -> dict[str, Any]:
        """What every report says of the weights this trial keeps: their score, and their further metrics."""
        return {SCORE: kept_score(rows, data.metric)[1],
                **{f"kept_{name}": kept_score(rows, name)[1] for name in data.kept_metrics},
                "node_id": node_id, "reported_at": time.time()}  # to the microsecond (Ray's `timestamp`: seconds)

    def report(row: dict[str, Any], state: Any) -> None:
        rows.append(row)
        row.update(kept())
        with tempfile.TemporaryDirectory() as d:
            torch.save(state(), Path(d) / "state.pt")
            ray_tune.report(row, checkpoint=ray_tune.Checkpoint.from_directory(d))

    cache = Path(data.cache_dir) if data.cache_dir else None
    costs = None
    if data.serving is not None:
        costs = functools.partial(measure, image_size=cfg.image_size, serving=data.serving, seed=cfg.seed)
    train, valid, extra = data.crop if cfg.resize == "crop" and data.crop else (data.train, data.valid, data.extra)
    with until(data.deadline):
        result = fit(cfg, train, valid, extra=extra, report=report, resume=resume, cache_dir=cache, log=None,
                     measure=costs)
    if result.ended == OUT_OF_TIME:
        # No "epoch" and no checkpoint: ASHA and the per-epoch readers never see it (a partial epoch is no rung),
        # the trial's latest checkpoint stays its last completed epoch's, and its `ended` says why it stopped.
        ray_tune.report({"ended": OUT_OF_TIME, CUT_SHORT: round(result.cut_s, 3), "epochs_done": len(rows),
                         "best_epoch": kept_score(rows, data.metric)[0] or 0, **kept()})
