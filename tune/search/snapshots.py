"""Ray's experiment snapshot, kept whole across a kill, and the checkpoints it names, found on --resume.

Ray writes its snapshot (experiment_state-*.json with the searcher's state beside it) into a staging folder on
the driver, then copies that folder into the experiment's storage in a background thread, rewriting each file
in place. A driver killed mid-copy leaves a snapshot cut short (or an older one than the driver had staged),
and Ray keeps no other copy: found on a CI machine, where a SIGKILL tore it one run in a few.
`KeepWhole` copies the staged set, which the driver has just written and nothing rewrites while callbacks run,
to `.whole/` in the experiment folder: one set at a time, each complete before the older one goes.

Ray also deletes a running trial's older checkpoints (CheckpointConfig.num_to_keep) while the copy of the
snapshot naming one of them may still be in flight; --resume then fails that trial with "Could not recover
from checkpoint". `mend_checkpoints` gives the checkpoint the snapshot names the content of the trial's newest
one: each checkpoint holds the trial's whole history (tune/search/trainable.py), so the trial goes on from its
newest epoch, and the replayed result rows are read once each (tune.runs.trials.per_epoch).
"""

from __future__ import annotations

import json
import posixpath
import re
import time
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
from ray.tune import Callback

from tune.runs.layout import filesystem

WHOLE = ".whole"  # in the experiment folder: one numbered folder per kept set, DONE in it once complete
DONE = "DONE"
SNAPSHOT = re.compile(r"(experiment_state|search_gen_state|searcher-state)-.*\.(json|pkl)$")  # Ray's per-round files


def is_whole(name: str, data: bytes) -> bool:
    """Whether a snapshot file's bytes are complete: JSON that parses, or a pickle ending in its STOP opcode (Ray's
    search_gen_state-*.json is a pickle too, whatever its name says)."""
    if name.endswith(".pkl") or data.startswith(b"\x80"):  # pickle protocol 2 and later open with PROTO (0x80)
        return data.endswith(b".")
    try:
        json.loads(data)
    except ValueError:
        return False
    return True


class KeepWhole(Callback):
    """On the driver, after each step (Ray has just staged its snapshot) and at the end (after Ray's final one):
    keep the staged set if it changed. Ray pickles it with the experiment, so a resumed search keeps keeping."""

    def __init__(self) -> None:
        self.kept = 0  # the staged experiment_state's mtime (ns) last kept

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.on_step_end(0, trials)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if trials:
            try:
                self.keep(trials[0].storage)
            except OSError as e:  # a storage hiccup costs this copy, never the search; the next step retries
                print(f"[search] the snapshot's spare copy was not written this time ({e})", flush=True)

    def keep(self, storage: Any) -> None:
        staged = [p for p in Path(storage.experiment_driver_staging_path).glob("*") if SNAPSHOT.match(p.name)]
        state = [p.stat().st_mtime_ns for p in staged if p.name.startswith("experiment_state")]
        if not state or max(state) == self.kept:
            return
        fs, root = storage.storage_filesystem, posixpath.join(storage.experiment_fs_path, WHOLE)
        folder = posixpath.join(root, f"{time.time_ns():020d}")
        fs.create_dir(folder)
        for p in staged:
            with fs.open_output_stream(posixpath.join(folder, p.name)) as f:
                f.write(p.read_bytes())
        with fs.open_output_stream(posixpath.join(folder, DONE)) as f:
            f.write(b"")
        for old in _sets(fs, root):
            if old.path != folder:
                fs.delete_dir(old.path)
        self.kept = max(state)


def _sets(fs: pafs.FileSystem, root: str) -> list[pafs.FileInfo]:
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return []
    return sorted((i for i in fs.get_file_info(pafs.FileSelector(root)) if i.type == pafs.FileType.Directory),
                  key=lambda i: i.base_name)


def _read(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.readall()


def put_back(location: str) -> str | None:
    """Before --resume: put the kept set in place of the experiment's own snapshot files when those are torn or
    older than it (the copy was in flight when the driver died). Older by Ray's step counter in the snapshot
    (runner_data._iteration), not by file times, which a coarse filesystem clock blurs (a file written just after
    the kept copy was seen dated before it). Returns why, or None when they were left as they were."""
    fs, root = filesystem(location)
    whole = [s for s in _sets(fs, posixpath.join(root, WHOLE))
             if fs.get_file_info(posixpath.join(s.path, DONE)).type == pafs.FileType.File]
    if not whole:
        return None
    kept = {f.base_name: _read(fs, f.path) for f in fs.get_file_info(pafs.FileSelector(whole[-1].path))
            if f.base_name != DONE}
    top = {i.base_name: _read(fs, i.path) for i in fs.get_file_info(pafs.FileSelector(root))
           if i.type == pafs.FileType.File and SNAPSHOT.match(i.base_name)}
    torn = [name for name, data in top.items() if not is_whole(name, data)]
    newest = max((n for n in kept if n.startswith("experiment_state")), default=None)
    if newest is None:
        return None
    if torn:
        cause = f"{torn[0]} was cut short"
    elif newest not in top or _step(top[newest]) < _step(kept[newest]):
        cause = "its copy in the experiment folder was an older one"
    else:  # as new as the kept one, or newer: Ray's final snapshot has the last step's counter, with trials ended
        return None
    for name in top:  # this round's files are rewritten below; another round's would mismatch the kept set
        fs.delete_file(posixpath.join(root, name))
    for name, data in kept.items():
        with fs.open_output_stream(posixpath.join(root, name)) as out:
            out.write(data)
    when = time.strftime("%H:%M:%S", time.localtime(int(whole[-1].base_name) / 1e9))
    return f"Ray's snapshot: {cause} when the search was stopped; resuming from the whole one staged at {when}"


def _step(data: bytes) -> int:
    """Ray's step counter in an experiment snapshot: it grows with every step of one driver session."""
    try:
        return int(json.loads(data)["runner_data"]["_iteration"])
    except (ValueError, KeyError, TypeError):
        return -1


def mend_checkpoints(location: str) -> list[str]:
    """Before --resume: for each unfinished trial whose latest checkpoint, as the snapshot names it, is gone but
    a newer one exists, copy the newest into that name. Returns a line per trial mended."""
    fs, root = filesystem(location)
    states = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(root))
                    if i.base_name.startswith("experiment_state-") and i.base_name.endswith(".json"))
    if not states:
        return []
    mended = []
    for trial_json, meta_json in json.loads(_read(fs, states[-1]))["trial_data"]:  # Ray restores the newest
        trial, meta = _as_dict(trial_json), _as_dict(meta_json)
        named = restored_from(meta)
        folder = posixpath.join(root, str(trial.get("relative_logdir", "")))
        if trial.get("status") == "TERMINATED" or not named or not trial.get("relative_logdir"):
            continue
        if fs.get_file_info(posixpath.join(folder, named)).type != pafs.FileType.NotFound:
            continue
        there = sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
                       if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_"))
        if not there or there[-1] < named:
            continue  # nothing newer to go on from: Ray's own error says which checkpoint is missing
        fs.create_dir(posixpath.join(folder, named))  # copy_files writes into a folder, and makes none
        pafs.copy_files(posixpath.join(folder, there[-1]), posixpath.join(folder, named),
                        source_filesystem=fs, destination_filesystem=fs)
        mended.append(f"trial {trial.get('trial_id')}: {named}, which the snapshot names, was already replaced "
                      f"by {there[-1]}; going on from that")
    return mended


def restored_from(meta: dict[str, Any]) -> str | None:
    """The checkpoint Ray restores a trial from: the latest its checkpoint manager holds. That manager is pickled
    into the snapshot (hex); the folder names in it are read as text, never unpickled. Not the last result's
    checkpoint_dir_name: a snapshot taken between a result and its checkpoint's registration names the older."""
    manager = meta.get("checkpoint_manager")
    blob = manager.get("value", "") if isinstance(manager, dict) else ""
    try:
        names = re.findall(rb"checkpoint_\d{6}", bytes.fromhex(blob))
    except ValueError:
        return None
    return max(names).decode() if names else None


def _as_dict(value: Any) -> dict[str, Any]:
    return json.loads(value) if isinstance(value, str) else dict(value)
