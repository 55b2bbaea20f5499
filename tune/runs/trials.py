"""A run's trials as Ray Tune stored them, read wherever --storage put them, and how each one ended.

Ray's public `ExperimentAnalysis` (given the pyarrow filesystem of the experiment's folder or URI)
says which trials exist and their status. Its snapshot is written now and then, so mid-search the
trial folders are listed too: a trial started since the last snapshot still shows, with no status.
Each trial's params.json and result.json (Ray's documented per-trial files) are read through the
same filesystem; a line being written right now is skipped.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs

from tune.metrics.classification import metric_value
from tune.runs.layout import Run, RunRecord, filesystem, trial_folder

SCORE = "score"  # what a trial reports to Ray, ASHA and Optuna: the search metric at its kept epoch
# In a trial's last report when the time budget's deadline cut an epoch short: the seconds that epoch had run. That
# report has no "epoch" (the unfinished epoch is never one: not a row, not an ASHA rung, not an Optuna step); it says
# the trial ended "time_budget" and repeats the kept epoch's score (tune/search/trainable.py).
CUT_SHORT = "cut_short_s"


def kept_score(rows: list[dict[str, Any]], metric: str) -> tuple[int | None, float]:
    """(kept epoch, `metric` at that epoch) from a trial's per-epoch rows. The kept epoch is the one its
    `monitor` chose (tune.training.loop.fit's best_epoch), so this is the score of the weights the trial kept
    (a combined metric such as mean_auc is computed from the row: tune.metrics.classification.metric_value); (None, NaN)
    before any usable epoch."""
    kept = int(rows[-1].get("best_epoch") or 0) if rows else 0
    row = next((r for r in rows if r.get("epoch") == kept), None) if kept else None
    return (kept, metric_value(row, metric)) if row else (None, math.nan)


def ended_how(last_result: dict[str, Any] | None, status: str, error_file: bool = False) -> str:
    """How a trial ended, the one place that says it.

    The trial itself says completed / early_stopped (patience) / diverged / time_budget (its deadline
    passed mid-epoch: tune.training.deadline.OUT_OF_TIME) in its last result's `ended`, and the scheduler's
    stops are written there too (tune/search/progress.py: stopped_by_asha, or time_budget at an epoch's
    end); a trial Ray terminated without any was stopped by ASHA (runs of earlier versions); ERROR is
    errored. `status` is Ray's (TERMINATED, ERROR, RUNNING, PENDING, or "" when Ray's snapshot does
    not list the trial yet); `error_file`: the trial folder holds an error.txt.
    """
    if status == "ERROR" or (error_file and not status):
        return "errored"
    if last_result and last_result.get("ended"):
        return str(last_result["ended"])
    if status == "TERMINATED":
        return "stopped_by_asha"
    return "running" if status in ("RUNNING", "PENDING") else "interrupted"


@dataclass
class TrialRecord:
    arch: str
    trial_id: str
    location: str  # the trial folder (a path, or a path inside the experiment's filesystem)
    status: str  # Ray's view, "" when its snapshot does not list the trial yet
    params: dict[str, Any] = field(default_factory=dict)  # params.json: the trial's full config
    results: list[dict[str, Any]] = field(default_factory=list)  # one per epoch (the last report of each)
    error: str = ""  # the telling line of error.txt, "" when there is none
    last: dict[str, Any] | None = None  # its last report: the last epoch's, or one that is no epoch (CUT_SHORT)

    @property
    def ended(self) -> str:
        last = self.last if self.last is not None else self.results[-1] if self.results else None
        return ended_how(last, self.status, bool(self.error))


def reports(lines: str) -> list[dict[str, Any]]:
    """result.json's reports in the order made, epochs or not; a line being written right now is skipped."""
    out = []
    for line in lines.splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if isinstance(r, dict):
            out.append(r)
    return out


def per_epoch(lines: str) -> list[dict[str, Any]]:
    """result.json's rows, one per epoch: a trial resumed from a checkpoint replays some epochs, and
    the last report of each wins; a report that is no epoch (CUT_SHORT) is not a row."""
    by_epoch = {int(r["epoch"]): r for r in reports(lines) if "epoch" in r}
    return [by_epoch[e] for e in sorted(by_epoch)]


def _read_text(fs: Any, path: str) -> str | None:
    try:
        with fs.open_input_stream(path) as f:
            return f.readall().decode("utf-8", errors="replace")
    except (FileNotFoundError, OSError):
        return None


def _error_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    errs = [ln for ln in lines if "Error" in ln or "Exception" in ln]
    return (errs[-1] if errs else lines[-1] if lines else "error.txt is empty")[:200]


def _read_trial(fs: Any, arch: str, trial_id: str, path: str, status: str) -> TrialRecord:
    params = _read_text(fs, f"{path}/params.json")
    results = _read_text(fs, f"{path}/result.json")
    error = _read_text(fs, f"{path}/error.txt")
    try:
        p = json.loads(params) if params else {}
    except ValueError:
        p = {}  # written by Ray before the trial starts; a torn read shows as "no params yet"
    made = reports(results or "")
    return TrialRecord(arch, trial_id, path, status, p, per_epoch(results or ""),
                       _error_line(error) if error is not None else "", made[-1] if made else None)


def ray_statuses(fs: Any, path: str) -> dict[str, str]:
    """{trial id: status} in the order Ray created the trials, from Ray's own experiment snapshot."""
    from ray.tune import ExperimentAnalysis  # heavy: ray only to read Ray's own experiment snapshot

    log = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = log.level
    log.setLevel(logging.ERROR)  # mid-search it warns about trials with no results yet: expected here
    try:
        analysis = ExperimentAnalysis(path, storage_filesystem=fs)
    except Exception:  # noqa: BLE001 - no snapshot yet, or one being replaced: the folders still tell
        return {}
    finally:
        log.setLevel(level)
    return {t.trial_id: str(t.status) for t in analysis.trials}


def read_experiment(location: str, arch: str) -> list[TrialRecord]:
    """The trials of one Ray experiment, in the order Ray created them (unlisted ones last)."""
    fs, root = filesystem(location)
    if fs.get_file_info(root).type == pyarrow.fs.FileType.NotFound:
        return []  # not started yet
    # ARCH_ID with Ray's 8-hex trial id: exact, so resnet50's trials are not also resnet50_gn's
    mine = re.compile(re.escape(trial_folder(arch, "")) + r"([0-9a-f]{8})$")
    folders = {m.group(1): i.path for i in fs.get_file_info(pyarrow.fs.FileSelector(root))
               if i.type == pyarrow.fs.FileType.Directory and (m := mine.match(i.base_name))}
    statuses = ray_statuses(fs, root)
    order = [t for t in statuses if t in folders] + sorted(t for t in folders if t not in statuses)
    trials = [_read_trial(fs, arch, t, folders[t], statuses.get(t, "")) for t in order]
    # Ray's snapshot lists trials as it holds them, and a restore (--resume) re-adds them newest result
    # first: the order they started is read from their own first result, so trial numbers never change (a trial the
    # deadline cut before its first epoch has only its last report, which says as much).
    return sorted(trials, key=lambda t: (0, started_at((t.results or [t.last])[0])) if t.last else (1, 0.0))


def started_at(first: dict[str, Any]) -> float:
    """When a trial started, from its first epoch's row: reported then, after running time_total_s."""
    reported = first.get("reported_at", first.get("timestamp", 0.0))
    return float(reported) - float(first.get("time_total_s", 0.0))


def _entries(location: str) -> tuple[Any, list[Any]]:
    """(filesystem, what the experiment folder at `location` holds: pyarrow FileInfos; none before it exists)."""
    fs, root = filesystem(location)
    if fs.get_file_info(root).type == pyarrow.fs.FileType.NotFound:
        return fs, []
    return fs, fs.get_file_info(pyarrow.fs.FileSelector(root))


def mend_torn_results(location: str) -> list[str]:
    """Cut a torn last line off every trial's result.json in the experiment at `location`; the paths mended.

    Ray writes result.json on the driver and copies it into the run folder, rewriting the file in place.
    A driver killed mid-copy leaves it cut short, possibly mid-line; --resume appends to it, and a torn
    line would swallow the first new row. Rows lost in the cut stay lost (the trial's own epoch count
    says how far it got); no row is ever half-kept."""
    fs, entries = _entries(location)
    mended = []
    for i in entries:
        path = f"{i.path}/result.json"
        text = _read_text(fs, path) if i.type == pyarrow.fs.FileType.Directory else None
        if text and not text.endswith("\n"):
            with fs.open_output_stream(path) as f:
                f.write(text[:text.rfind("\n") + 1].encode("utf-8"))
            mended.append(path)
    return mended


def torn_snapshots(location: str) -> list[str]:
    """Ray's experiment snapshots (experiment_state-*.json) at `location` that do not parse: rewritten in place
    like result.json (mend_torn_results), so a kill mid-copy can cut one short, and there is no older copy."""
    fs, entries = _entries(location)
    torn = []
    for i in entries:
        if i.base_name.startswith("experiment_state") and i.base_name.endswith(".json"):
            try:
                json.loads(_read_text(fs, i.path) or "")
            except ValueError:
                torn.append(i.base_name)
    return torn


def last_timestamp(location: str) -> float | None:
    """When the last result of any trial in the experiment at `location` was reported (Ray's `timestamp`),
    or None when none was: how long an interrupted experiment ran."""
    fs, entries = _entries(location)
    stamps = [r["timestamp"] for i in entries if i.type == pyarrow.fs.FileType.Directory
              for r in reports(_read_text(fs, f"{i.path}/result.json") or "") if "timestamp" in r]
    return max(stamps, default=None)


def read_trials(run: Run, record: RunRecord, arch: str) -> list[TrialRecord]:
    """Every trial of `arch` in the run (search and extensions), in the order they were created."""
    return [t for loc in run.experiments(record, arch) for t in read_experiment(loc, arch)]


def find_trial(run: Run, record: RunRecord, arch: str, trial_id: str) -> TrialRecord | None:
    """One trial by id (its params and results; status not looked up), or None."""
    for loc in run.experiments(record, arch):
        fs, root = filesystem(loc)
        path = f"{root}/{trial_folder(arch, trial_id)}"
        if fs.get_file_info(path).type == pyarrow.fs.FileType.Directory:
            return _read_trial(fs, arch, trial_id, path, "")
    return None
