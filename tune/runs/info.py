"""What finalize and reproduce need from a finished search's run folder, read one way.

Both re-run training outside Ray, so both must rebuild exactly what a trial saw: the same
data (checked by fingerprint), the same config (params.json), the same thread count and the
same cache setting. Keeping that in one place keeps the two commands honest with each other.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tune.core import UserError
from tune.data.frames import Preprocess
from tune.data.heldout import find, load_recorded, record_sources
from tune.data.images import load_split
from tune.runs.layout import Run, RunRecord
from tune.runs.trials import find_trial
from tune.training.config import TrainConfig

if TYPE_CHECKING:
    from tune.data.images import ImageSet
    from tune.runs.trials import TrialRecord


@dataclass(frozen=True)
class RunInfo:
    run_dir: Path
    name: str
    root: Path  # dataset root the search used
    image_size: int
    metric: str  # the search metric, e.g. val_auc
    mode: str  # "max" or "min"
    seed: int  # the space's seed; finalize uses seed + i
    max_epochs: int
    threads: int  # what every trial ran with: int(cpus_per_trial), at least 1
    use_cache: bool
    skip_bad: bool  # the search skipped unreadable images, so we must too
    fingerprints: dict[str, str]  # train/valid content hashes recorded by the search
    space: dict[str, Any]
    meta: RunRecord  # run.json
    moved_heldout: tuple[Path, ...] | None = None  # --valid-extra: where the recorded held-out sources are now

    @property
    def prep(self) -> Preprocess:
        """How the search made videos and faces into inputs (run.json's space; whole images before videos)."""
        return Preprocess.record(self.space.get("prep"))

    @property
    def run(self) -> Run:
        return Run(self.run_dir)

    @property
    def heldout(self) -> dict[str, Any] | None:
        """The held-out validation sources the search recorded (tune.data.heldout.record_sources), or None."""
        return self.meta.data.valid_extra


def read_run(run_dir: Path, *, data: Path | None = None, valid_extra: list[Path] | None = None) -> RunInfo:
    """The run's record. `data` and `valid_extra` say where its dataset and held-out sources are now, when they
    moved: data paths outside the run folder are recorded as given, and the loaders below refuse other images
    by their content fingerprints."""
    run_dir = Path(run_dir)
    meta = Run(run_dir).read()
    try:
        space, recorded = meta.space, meta.data
        return RunInfo(
            run_dir=run_dir, name=meta.name, root=Path(data).absolute() if data else Path(recorded.root),
            image_size=int(space["image_size"]),
            metric=space["metric"], mode=space["mode"], seed=int(space["seed"]),
            max_epochs=int(space["budget"]["max_epochs"]),
            threads=max(1, int(space["resources"]["cpus_per_trial"])),  # as tune.search.driver.run_search
            use_cache=meta.use_cache, skip_bad=bool(recorded.skipped),
            fingerprints={"train": recorded.train_fingerprint, "valid": recorded.valid_fingerprint},
            space=space, meta=meta, moved_heldout=tuple(valid_extra) if valid_extra else None)
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{Run(run_dir).record_file} is incomplete ({type(e).__name__}: {e}); was it written by "
                        "`python -m tune search`?") from None


def cache_dirs(info: RunInfo, cache_dir: Path | None) -> tuple[Path | None, Path | None]:
    """(decoded-image cache, frozen-feature cache): the same layout as the search, off when it was off."""
    if cache_dir is None or not info.use_cache:
        return None, None
    return Path(cache_dir) / "decoded", Path(cache_dir) / "features"


def load_train_valid(info: RunInfo, cache_dir: Path | None, resize: str = "bilinear") -> tuple[ImageSet, ImageSet]:
    """The search's train and valid splits; refuse when their content changed since the search."""
    decoded, _ = cache_dirs(info, cache_dir)
    out = []
    for split in ("train", "valid"):
        s = load_split(info.root, split, info.image_size, skip_bad=info.skip_bad, cache_dir=decoded,
                       resize=resize, prep=info.prep)
        if s.fingerprint != info.fingerprints[split]:
            raise UserError(f"the {split} data in {info.root} changed since search {info.name} ran (fingerprint "
                            f"{info.fingerprints[split]} in run.json, {s.fingerprint} now); its numbers cannot be "
                            "reproduced on different data")
        out.append(s)
    return out[0], out[1]


def load_heldout(info: RunInfo, cache_dir: Path | None, resize: str = "bilinear") -> list[ImageSet]:
    """The search's held-out validation sources (none for a run without them); refused when changed."""
    decoded, _ = cache_dirs(info, cache_dir)
    moved = list(info.moved_heldout) if info.moved_heldout else None
    return load_recorded(info.heldout, info.image_size, what=f"search {info.name} ran", dirs=moved,
                         cache_dir=decoded, skip_bad=info.skip_bad, resize=resize)


def record_moved_data(info: RunInfo, held_out: list[ImageSet]) -> None:
    """run.json points at where the data is now, once the loaders found the very same images there, so the
    next command needs no --data. Nothing is written when nothing moved."""
    data = info.meta.data
    moved = list(info.moved_heldout or ())
    if Path(data.root) == info.root and not moved:
        return
    held = record_sources(moved, held_out, find(moved)) if moved else data.valid_extra
    space = {**info.meta.space, "valid_extra": list(held["dirs"])} if moved and held else info.meta.space
    info.run.write(replace(info.meta, space=space, data=replace(data, root=str(info.root), valid_extra=held)))


def trial_record(info: RunInfo, arch: str, trial_id: str) -> TrialRecord | None:
    """One trial of the run (its params.json and per-epoch results), wherever Ray stored it."""
    return find_trial(info.run, info.meta, arch, trial_id)


def trial_config(info: RunInfo, arch: str, trial_id: str) -> TrainConfig:
    """The trial's full recorded config, plus what the trial got from its environment, not params.json."""
    t = trial_record(info, arch, trial_id)
    if t is None or not t.params:
        raise UserError(f"trial {arch} {trial_id} of run {info.name}: no params.json under "
                        f"{info.run.trials_root(info.meta)}")
    return TrainConfig.from_dict({**t.params, "threads": info.threads, "use_cache": info.use_cache})
