"""What a search does before its Tuner starts: check each architecture's weights, fill the feature caches.

Both happen once in the driver, not in every trial: a hub download happens once, an architecture
whose weights cannot be had is skipped (never run with random weights), and every frozen depth a
space can ask for gets its cached features, shortest prefix first (tune/cache.py), so trials of
every architecture start training at once.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from tune.core import UserError
from tune.data.images import ImageSet
from tune.search.space import SearchSpace
from tune.training.config import TrainConfig


def check_weights(space: SearchSpace) -> tuple[SearchSpace, dict[str, str], dict[str, str]]:
    """Build each architecture once with its fixed weights (downloading them now, in the driver, when
    they come from a hub). An architecture whose weights cannot be had is skipped, never run with
    random weights: (space without it, weights source per arch, reason per skipped arch)."""
    from tune.models.registry import build_model
    from tune.models.weights import WeightsUnavailable

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
    return p is not None and p.kind != "fixed"


def frozen_depths(space: SearchSpace, arch: str) -> list[int]:
    """Every unfrozen_blocks value the space can give `arch` (empty when the arch has no such setting)."""
    p = space.architectures[arch].get("unfrozen_blocks")
    if p is None:
        from tune.models.registry import get_arch

        spec = get_arch(arch).hparams.get("unfrozen_blocks")
        return [int(spec.default)] if spec is not None else []
    if p.kind == "fixed":
        return [int(p.value)]
    if p.kind == "categorical":
        return sorted({int(c) for c in p.choices})
    return list(range(int(p.low), int(p.high) + 1, int(p.step or 1)))


def precompute_features(space: SearchSpace, arch: str, train: ImageSet, valid: ImageSet, cache_dir: Path,
                        extra: list[ImageSet] | None = None) -> None:
    """The frozen-backbone cache for every depth the trials can ask for, built once before they start:
    the shortest prefix from the images, each longer one from the previous (tune/cache.py); valid and the
    held-out sources (`extra`) whatever the trials' settings."""
    from tune.training.cache import precompute
    from tune.training.loop import make_model

    depths = frozen_depths(space, arch)
    if not depths or sampled_weights(space, arch):
        return
    t0 = time.time()
    base = space.base_config(arch)
    cfg = TrainConfig.from_dict(base)
    models = [make_model(cfg.replace(unfrozen_blocks=d)) for d in depths]
    # The first training view only when every trial shares it: sampled augmentation settings (or flips)
    # make each trial's views its own, built by the trial that needs them.
    shared = not any(n in space.architectures[arch] and space.architectures[arch][n].kind != "fixed"
                     for n in ("augment", "aug_strength", "hflip"))
    precompute(models, train, valid, cfg, cache_dir=cache_dir, train_view=shared, extra=extra or ())
    print(f"[{arch}] frozen-backbone features for unfrozen_blocks {depths}: {time.time() - t0:.1f}s", flush=True)
