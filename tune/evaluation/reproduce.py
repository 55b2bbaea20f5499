"""`python -m tune reproduce [RUN] [--trial ID|best]`: re-run one trial and check its numbers.

The trial's recorded config (params.json) is trained again outside Ray, with its seed, its thread
count and the run's cache setting, on the same data (checked by fingerprint), for the epochs it
ran. Training is deterministic on CPU (tune.training.loop seeds every epoch from (seed, epoch)), so the
per-epoch numbers must match the recorded ones exactly: floats are compared with ==, and JSON
round-trips Python floats exactly, so there is no tolerance to hide a real difference behind.
A run with held-out validation sources reproduces them too (checked by fingerprint): their xval_
numbers, and the kept epoch its rule chose (best_epoch), are compared like the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tune.core import UserError
from tune.runs.info import RunInfo, cache_dirs, load_heldout, load_train_valid, read_run, trial_config, trial_record
from tune.runs.leaderboard import load_leaderboard
from tune.training.loop import fit

KEYS = ("train_loss", "val_loss", "val_accuracy", "val_auc")
HELD_OUT_KEYS = ("xval_loss", "xval_auc", "best_epoch")  # also compared when the run has held-out sources


@dataclass
class Reproduction:
    arch: str
    trial_id: str
    recorded: list[dict[str, Any]]
    reproduced: list[dict[str, Any]]
    keys: tuple[str, ...] = KEYS

    @property
    def differing(self) -> list[int]:
        """Epochs where any compared number is not bit-for-bit the recorded one (or was not reached)."""
        bad = []
        for i, rec in enumerate(self.recorded):
            rep = self.reproduced[i] if i < len(self.reproduced) else {}
            if not all(same(rec.get(k), rep.get(k)) for k in self.keys):
                bad.append(int(rec["epoch"]))
        return bad


def same(a: Any, b: Any) -> bool:
    """Exact equality, with NaN equal to NaN (a diverged epoch reproduces as NaN too)."""
    return a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)


def resolve_trial(info: RunInfo, wanted: str | None) -> tuple[str, str]:
    """(arch, trial id) for "best" (the leaderboard's top row), an id like 1bbc8688, or ARCH_1bbc8688."""
    if wanted in (None, "best"):
        board = load_leaderboard(info.run_dir)
        scored = board[board["score"].notna()] if len(board) else board
        if not len(scored):
            raise UserError(f"run {info.name} has no trial with a {info.metric} to reproduce")
        return str(scored.iloc[0]["arch"]), str(scored.iloc[0]["trial_id"])
    for arch in info.space["architectures"]:
        tid = wanted[len(arch) + 1:] if wanted.startswith(f"{arch}_") else wanted
        if trial_record(info, arch, tid) is not None:
            return arch, tid
    raise UserError(f"trial {wanted!r} not found in run {info.name} (see `python -m tune leaderboard "
                    f"{info.run_dir}` for trial ids, or use --trial best)")


def reproduce_trial(run_dir: Path, trial: str | None = "best", *, cache_dir: Path | None = None,
                    log: Callable[[str], None] = print, data: Path | None = None,
                    valid_extra: list[Path] | None = None) -> Reproduction:
    """`data` and `valid_extra`: where the run's data is now, if it moved (the same images, by content). A check
    writes nothing: run.json keeps what it records."""
    info = read_run(run_dir, data=data, valid_extra=valid_extra)
    arch, tid = resolve_trial(info, trial)
    found = trial_record(info, arch, tid)
    recorded = found.results if found else []  # one row per epoch: a resumed trial's replays counted once
    if not recorded:
        raise UserError(f"trial {arch}_{tid} has no recorded epochs to reproduce")
    cfg = trial_config(info, arch, tid)
    train, valid = load_train_valid(info, cache_dir, cfg.resize)  # refuses when the data changed
    extra = load_heldout(info, cache_dir, cfg.resize)  # so does this; a monitor such as mean_auc needs them
    _, features = cache_dirs(info, cache_dir)
    log(f"reproducing {arch} trial {tid} of run {info.name}: {len(recorded)} epoch(s), seed {cfg.seed}, "
        f"{cfg.threads} thread(s), cache {'on' if cfg.use_cache else 'off'}")
    threads_before = torch.get_num_threads()
    try:
        result = fit(cfg, train, valid, extra=extra, cache_dir=features, log=None, stop_after=len(recorded))
    finally:
        torch.set_num_threads(threads_before)  # fit set the trial's count for the whole process
    return Reproduction(arch, tid, recorded, result.history, KEYS + (HELD_OUT_KEYS if extra else ()))


def render(rep: Reproduction) -> str:
    lines = [f"{'epoch':>5}  {'metric':<12}  {'recorded':<22}  {'reproduced':<22}"]
    for i, rec in enumerate(rep.recorded):
        got = rep.reproduced[i] if i < len(rep.reproduced) else {}
        for k in rep.keys:
            a, b = rec.get(k), got.get(k, "(not reached)")
            lines.append(f"{rec['epoch']:>5}  {k:<12}  {a!r:<22}  {b!r:<22}  {'same' if same(a, b) else 'DIFFERS'}")
    return "\n".join(lines) + "\n"


