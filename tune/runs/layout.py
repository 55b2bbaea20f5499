"""The run folder: its layout, run.json (read and written only here), and where its trials live.

A search named RUN owns two places:

    results/RUN/                the run folder (or STORAGE/RUN when --storage is a path)
      run.json                  what the search was: space, data fingerprints, versions, trials root, extensions
      optuna.db                 one Optuna study per architecture, named RUN-ARCH (only `search --resume/--extend`
                                need it; the report leaves its charts out without it)
      leaderboard.csv / .md, comparison.md/.csv/.json, report.html
      finalize/NAME/seedS/      finalize's retrainings
      models/ARCH.pth / .json   the winners
      plots/NAME.png            plots/cam_ARCH.png: where each winner looked (Grad-CAM) on the test split
    TRIALS/EXPERIMENT/ARCH_ID/  Ray Tune's trial folders; TRIALS is results/RUN/trials, or URI/RUN when
                                --storage is a URI (s3://..., file://...): then only the trials go there,
                                and run.json records the URI, so every reader finds them without --storage.

EXPERIMENT is one Ray experiment holding every architecture's trials: `search` for the search itself,
`extendK` for its K-th `--extend` (run.json names each). Runs written before that layout kept one
experiment per architecture (ARCH, ARCH-extendK) and are read the same way.
Every other module asks this one for a path; none spells one.
"""

from __future__ import annotations

import re
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pyarrow.fs

from tune.core import UserError, atomic_write_json, known, plain, read_json

RESULTS = Path("results")  # where run folders live unless --storage names a folder
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
LOCAL_TRIALS = "trials"  # run.json's trials_root for trials kept inside the run folder (moves with it)
FINALIZE = "finalize"  # finalize's retrainings: finalize/NAME/seedS


def check_run_name(name: str) -> str:
    """Run names are single folder names: they can never escape the results folder."""
    if not RUN_NAME.match(name) or ".." in name:
        raise UserError(f"bad run name {name!r}: use letters, digits, '.', '_' and '-' only "
                        "(no path separators, no '..', at most 100 characters)")
    return name


def is_uri(storage: str | None) -> bool:
    return bool(storage) and "://" in str(storage)


def results_root(storage: str | None) -> Path:
    """The folder holding run folders: --storage when it is a folder, else results/ (with a URI
    --storage only the trials go to the URI; the run folder stays in results/)."""
    return Path(storage) if storage and not is_uri(storage) else RESULTS


def join(location: str, *parts: str) -> str:
    """location/part/...; a URI keeps its query (e.g. s3://b/p?endpoint_override=...) at the end."""
    if not is_uri(location):
        return str(Path(location, *parts))
    u = urlsplit(location)
    return urlunsplit(u._replace(path="/".join([u.path.rstrip("/"), *parts])))


def filesystem(location: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """(pyarrow filesystem, path in it) for a folder or a URI, the filesystem layer Ray itself writes through."""
    if not is_uri(location):
        return pyarrow.fs.LocalFileSystem(), str(Path(location).absolute())
    try:
        return pyarrow.fs.FileSystem.from_uri(location)
    except (ValueError, OSError) as e:  # unknown scheme, bad bucket, no credentials...
        raise UserError(f"cannot open storage {location}: {e}") from None


def exists(location: str) -> bool:
    fs, path = filesystem(location)
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def folder_name(name: str) -> str:
    """An architecture's (or a finalized model's) name as one folder name: timm/NAME → timm--NAME."""
    return name.replace("/", "--")


def experiment_name(extension: int = 0) -> str:
    """The Ray experiment of the search (`search`) or of its K-th --extend (`extendK`)."""
    return "search" if extension == 0 else f"extend{extension}"


def legacy_experiment_name(arch: str, extension: int = 0) -> str:
    """An architecture's own experiment in runs of the earlier layout: ARCH, then ARCH-extendK."""
    return folder_name(arch) if extension == 0 else f"{folder_name(arch)}-extend{extension}"


def trial_folder(arch: str, trial_id: str) -> str:
    """The trial folder's name inside its experiment (given to Ray as trial_dirname_creator)."""
    return f"{folder_name(arch)}_{trial_id}"


def evaluation_folder(results: Path) -> Path:
    """`evaluate`'s default output folder: results/eval-DATE-TIME."""
    return Path(results) / f"eval-{time.strftime('%Y%m%d-%H%M%S')}"


def run_of_model(path: Path) -> Run | None:
    """The run folder a model file belongs to (RUN/models/ARCH.pth, RUN/finalize/NAME/seedS/best.pth),
    or None for a model outside any run (a train folder's best.pth)."""
    p = Path(path).absolute()
    for cand in p.parents[1:4]:
        if Run(cand).exists():
            return Run(cand)
    return None


# --------------------------------------------------------------------------- run.json
@dataclass
class DataRecord:
    """The data a search ran on: where, each split's content fingerprint, sizes, and the held-out sources."""

    root: str
    train_fingerprint: str
    valid_fingerprint: str
    n_train: int = 0
    n_valid: int = 0
    classes: dict[str, dict[str, int]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    valid_extra: dict[str, Any] | None = None  # held-out validation sources: folders, fingerprints


@dataclass
class Extension:
    """One --extend of a finished search: its budget and its Ray experiment."""

    trials: int | None = None
    time_s: float | None = None
    experiment: str | None = None  # None: the earlier layout (one experiment per architecture, ARCH-extendK)
    started: str = ""
    started_at: float | None = None


@dataclass
class RunRecord:
    """run.json: what a search was (space, data, rule, weights), where its trials are, and what it has run."""

    name: str
    space: dict[str, Any]  # tune.search.space.SearchSpace as dataclasses.asdict wrote it
    data: DataRecord
    trials_root: str = "trials"
    experiment: str | None = None  # the search's Ray experiment; None: the earlier layout (one per architecture)
    extensions: list[Extension] = field(default_factory=list)
    rule: dict[str, Any] = field(default_factory=dict)  # metric, mode, a one-line description
    weights: dict[str, str] = field(default_factory=dict)  # architecture -> weights source
    skipped: dict[str, str] = field(default_factory=dict)  # architecture -> why the search skipped it
    space_file: str = ""
    use_cache: bool = True
    versions: dict[str, str] = field(default_factory=dict)
    started: str = ""
    started_at: float | None = None
    resumed: str | None = None
    address: str | None = None  # search --address: the Ray cluster it ran on, where finalize retrains too
    pick: dict[str, Any] | None = None  # finalize --pick: the rule and the trial it named (tune/evaluation/picking.py)

    @property
    def metric(self) -> str:
        return str(self.space["metric"])

    @property
    def mode(self) -> str:
        return str(self.space["mode"])

    @property
    def architectures(self) -> list[str]:
        return list(self.space["architectures"])

    @classmethod
    def load(cls, path: Path) -> RunRecord:
        """run.json as this version or an earlier one wrote it."""
        d = read_json(path)
        try:
            return known(cls, {**d, "data": known(DataRecord, d["data"]),
                                "extensions": [known(Extension, e) for e in d.get("extensions", [])]})
        except (KeyError, TypeError) as e:
            raise UserError(f"{path} is incomplete ({type(e).__name__}: {e}); was it written by `python -m tune "
                            "search`?") from None

    def save(self, path: Path) -> None:
        atomic_write_json(path, self.toplain())

    def toplain(self) -> dict[str, Any]:
        out = plain(self)
        out["data"] = plain(self.data)
        out["extensions"] = [plain(e) for e in self.extensions]
        return out


@dataclass(frozen=True)
class Run:
    """One run folder. Paths only; nothing is read until asked."""

    path: Path

    @classmethod
    def named(cls, root: Path, name: str) -> Run:
        # resolved: `..` or a symlink in --storage names the same run folder as the plain path
        return cls((Path(root) / check_run_name(name)).resolve())

    @property
    def name(self) -> str:
        return self.path.name

    # ------------------------------------------------------------------ files of the run folder
    @property
    def record_file(self) -> Path:
        return self.path / "run.json"

    @property
    def optuna_db(self) -> Path:
        return self.path / "optuna.db"

    @property
    def optuna_url(self) -> str:
        return f"sqlite:///{self.optuna_db.absolute()}"

    def optuna_problem(self) -> str | None:
        """None when optuna.db opens as an Optuna database; else what is wrong with it, in words. Opened read-only:
        asking never creates the file (sqlite would make an empty one)."""
        if not self.optuna_db.is_file():
            return f"{self.optuna_db} is missing"
        try:
            with closing(sqlite3.connect(f"{self.optuna_db.absolute().as_uri()}?mode=ro", uri=True)) as db:
                db.execute("SELECT count(*) FROM studies").fetchone()
        except sqlite3.Error as e:
            return f"{self.optuna_db} is not a readable Optuna database ({e})"
        return None

    def study_name(self, arch: str, record: RunRecord) -> str:
        """The architecture's Optuna study in optuna.db: RUN-ARCH, RUN as the search named it
        (a run folder copied under another name keeps its studies)."""
        return f"{record.name}-{arch}"

    def leaderboard(self, ext: str) -> Path:  # csv or md
        return self.path / f"leaderboard.{ext}"

    def comparison(self, ext: str) -> Path:  # md, csv or json
        return self.path / f"comparison.{ext}"

    @property
    def report_html(self) -> Path:
        return self.path / "report.html"

    def plot(self, name: str) -> Path:
        return self.path / "plots" / f"{name}.png"

    def cam_panel(self, arch: str) -> Path:
        """finalize's Grad-CAM panel of a winner on the test split (the report shows it)."""
        return self.plot(f"cam_{folder_name(arch)}")

    def model(self, arch: str, ext: str = "pth") -> Path:  # the winner's weights (pth) or record (json)
        return self.path / "models" / f"{folder_name(arch)}.{ext}"

    def winners(self) -> list[Path]:
        """The exported winners (models/*.pth), for evaluate --run; none yet is one clear error."""
        found = sorted((self.path / "models").glob("*.pth"))
        if not found:
            raise UserError(f"run {self.path} has no exported models in {self.path / 'models'} (run finalize first)")
        return found

    @property
    def extra_test(self) -> Path:
        """Where `finalize --extra-test` writes evaluate's files inside the run folder."""
        return self.path / "extra-test"

    def finalize(self, name: str, seed: int | None = None) -> Path:
        """finalize/NAME, or finalize/NAME/seedS for one retraining."""
        d = self.path / FINALIZE / folder_name(name)
        return d if seed is None else d / f"seed{seed}"

    # ------------------------------------------------------------------ paths the run's files record
    def own(self, path: Path) -> str:
        """A path inside this run folder as a record keeps it: relative to the folder, so the run can move."""
        return Path(path).absolute().relative_to(self.path.absolute()).as_posix()

    def recorded(self, text: str) -> Path:
        """A path a record of this run keeps (own()), where it is now. Earlier versions kept absolute paths: their
        part from the run's own finalize/ folder on is taken, so a moved or copied run reads its own files."""
        p = Path(text)
        if not p.is_absolute():
            return self.path / p
        tail = p.parts.index(FINALIZE) if FINALIZE in p.parts else None
        return self.path.joinpath(*p.parts[tail:]) if tail is not None else p

    # ------------------------------------------------------------------ run.json
    def exists(self) -> bool:
        return self.record_file.is_file()

    def read(self) -> RunRecord:
        return RunRecord.load(self.record_file)

    def write(self, record: RunRecord) -> None:
        record.save(self.record_file)

    # ------------------------------------------------------------------ the trials
    def trials_root(self, record: RunRecord) -> str:
        """Where Ray put this run's experiments: the URI run.json names, else the run folder's trials/."""
        return record.trials_root if is_uri(record.trials_root) else str(self.path / LOCAL_TRIALS)

    def experiments(self, record: RunRecord, arch: str) -> list[str]:
        """Every Ray experiment holding `arch`'s trials, oldest first: the search, then each --extend. Each
        is named in run.json; one that is not (the earlier layout) is the architecture's own."""
        parts = [record.experiment, *(e.experiment for e in record.extensions)]
        root = self.trials_root(record)
        return [join(root, name or legacy_experiment_name(arch, k)) for k, name in enumerate(parts)]


def trials_root_for(run: Run, storage_uri: str | None) -> str:
    """run.json's trials_root for a new search: URI/RUN, or "trials" (inside the run folder)."""
    return join(storage_uri, run.name) if storage_uri else LOCAL_TRIALS


def resolve_run(run: str | None, results: Path) -> Path:
    """A run name under `results`, a run folder's path, or (None) the newest run."""
    if run is None:
        runs = sorted((p for p in results.glob("*/run.json")), key=lambda p: p.stat().st_mtime)
        if not runs:
            raise UserError(f"no search runs found under {results}")
        return runs[-1].parent
    p = Path(run)
    for cand in (p, results / run):
        if (cand / "run.json").is_file():
            return cand
    raise UserError(f"run not found: {run} (looked for {p}/run.json and {results / run}/run.json)")
