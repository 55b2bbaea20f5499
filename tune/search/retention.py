"""What a search keeps of its trials' checkpoints: the space's `checkpoints` (tune/search/space.py RETENTION).

keep_all: every epoch's checkpoint, whole (Ray deletes none). keep_best: while a trial runs, Ray keeps its two
latest (make_tuner says why two); once it has finished, `Retention` deletes all but its latest checkpoint and
slims that one to the kept epoch's weights (tune/training/checkpoint.py `finished`), which is all a finished
trial is read back for: nothing resumes a finished trial (--resume goes on with unfinished ones, --extend starts
new ones). A demo Lite0 trial then keeps 12-14 MB instead of two checkpoints of 38-57 MB.

Not at once: until Ray's next experiment snapshot records the trial as finished, a crash and --resume would
restart it from the checkpoint the last snapshot names, possibly the older one. So a finished trial is pruned
once a few snapshot periods (TUNE_GLOBAL_CHECKPOINT_S, cluster.quiet_ray) have passed, and the rest when the
experiment ends, after Ray's final snapshot. Errored trials keep theirs: --resume retries them.
"""

from __future__ import annotations

import io
import math
import os
import posixpath
import time
from typing import Any

import torch
from pyarrow import fs as pafs
from ray.tune import Callback

from tune.training.checkpoint import finished

STATE = "state.pt"  # the file each checkpoint folder holds (run_trial writes it)


def settle_s() -> float:
    """How long after a trial finished its checkpoints may go: three snapshot periods and a second (Ray's
    adaptive "auto" period is at least 10 s; assume 30)."""
    try:
        period = float(os.environ.get("TUNE_GLOBAL_CHECKPOINT_S", "auto"))
    except ValueError:
        period = 30.0
    return 3 * period + 1


def prune(checkpoint: Any) -> int:
    """Delete the other `checkpoint_*` folders of the trial whose latest checkpoint this is (a ray.tune.Checkpoint,
    on whatever filesystem --storage named), and slim this one. Returns how many folders were deleted."""
    fs, path = checkpoint.filesystem, posixpath.normpath(checkpoint.path)
    trial_dir, latest = posixpath.split(path)
    old = [i.path for i in fs.get_file_info(pafs.FileSelector(trial_dir))
           if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_") and i.base_name != latest]
    for p in old:
        fs.delete_dir(p)
    file = f"{path}/{STATE}"
    with fs.open_input_file(file) as f:
        state = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
    slim = finished(state)
    if slim is not state:
        buf = io.BytesIO()
        torch.save(slim, buf)
        with fs.open_output_stream(file + ".tmp") as f:  # then moved over it: never a half-written state.pt
            f.write(buf.getvalue())
        fs.move(file + ".tmp", file)
    return len(old)


class Retention(Callback):
    """keep_best's pruning, on the driver (Ray pickles it with the experiment, so --resume keeps pruning)."""

    def __init__(self) -> None:
        self.finished_at: dict[str, float] = {}  # trial id -> when it finished, until pruned
        self.pruned: set[str] = set()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.finished_at[trial.trial_id] = time.monotonic()

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if self.finished_at:
            settled = time.monotonic() - settle_s()
            self._prune([t for t in trials if self.finished_at.get(t.trial_id, math.inf) <= settled])

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        # After a normal end Ray has written its final snapshot: every finished trial can go, those a crash left
        # unpruned before a --resume too. An experiment that failed may have trials its last snapshot still
        # calls running: only the settled ones then.
        if all(t.status in ("TERMINATED", "ERROR") for t in trials):
            self._prune(trials)
        else:
            self.on_step_end(0, trials)

    def _prune(self, trials: list) -> None:
        for trial in trials:
            self.finished_at.pop(trial.trial_id, None)
            if trial.status != "TERMINATED" or trial.checkpoint is None or trial.trial_id in self.pruned:
                continue
            self.pruned.add(trial.trial_id)
            try:
                prune(trial.checkpoint)
            except Exception as e:  # noqa: BLE001 - a storage hiccup or an odd file costs disk, never the search
                first = str(e).splitlines()[0] if str(e) else ""
                print(f"[search] trial {trial.trial_id}: its checkpoints were left as they were "
                      f"({type(e).__name__}: {first})", flush=True)
