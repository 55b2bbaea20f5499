"""The weights check a search makes before its Tuner starts (tune.search.driver.prepare calls it).

Once in the driver, not in every trial: a hub download happens once, and an architecture whose weights
cannot be had is skipped (never run with random weights).

The frozen-prefix features are not built in the driver: each trial builds the files it needs when it first
needs them, once per node (tune/training/cache.py, tune/training/store.py). Built in the driver, valid at
every depth the space can reach (and the first training view when every trial shares it) would keep every
slot waiting, for depths most trials never use (a 6-trial demo search draws at most 6 of its 7 Lite0 depths,
ASHA stops half of them after 2 epochs); with augmentation sampled, the trials build the training views
anyway. Measured on the demo space (benchmarks/cache_budget.py, docs/speed.md, "Feature caches with a
budget"): see there for the numbers.
"""

from __future__ import annotations

from dataclasses import replace

from tune.core import UserError
from tune.models.hparams import HParamKind
from tune.models.registry import build_model
from tune.models.weights import WeightsUnavailable
from tune.search.space import SearchSpace
from tune.training.config import TrainConfig


def check_weights(space: SearchSpace) -> tuple[SearchSpace, dict[str, str], dict[str, str]]:
    """Build each architecture once with its fixed weights (downloading them now, in the driver, when
    they come from a hub). An architecture whose weights cannot be had is skipped, never run with
    random weights: (space without it, weights source per arch, reason per skipped arch)."""
    sources, skipped = {}, {}
    for arch in space.architectures:
        if sampled_weights(space, arch):
            sources[arch] = "sampled per trial (each trial loads its own)"
            continue
        try:
            cfg = TrainConfig.from_dict(space.base_config(arch))
            sources[arch] = build_model(arch, **cfg.hparams).weights_source
        except WeightsUnavailable as e:
            skipped[arch] = str(e).removeprefix(f"{arch}: ")
            print(f"[{arch}] skipped: {skipped[arch]}", flush=True)
    if len(skipped) == len(space.architectures):
        raise UserError(f"no architecture of {space.source} can run: {'; '.join(skipped.values())}")
    archs = {a: p for a, p in space.architectures.items() if a not in skipped}
    return replace(space, architectures=archs), sources, skipped


def sampled_weights(space: SearchSpace, arch: str) -> bool:
    p = space.architectures[arch].get("weights")
    return p is not None and p.kind != HParamKind.FIXED
