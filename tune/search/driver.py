"""The search driver: one Ray Tune Tuner runs every architecture's trials; Optuna (TPE, one study per
architecture) decides what to try, one ASHA per architecture when to stop, the budget how many.

Running every architecture in one Tuner keeps every slot busy (Ray Tune runs one Tuner at a time
on a cluster; one Tuner per architecture, one after the other, left slots idle at each tail and
capped a cluster at one architecture's trials). Fairness is the budget's: the same number of trials
each, or the same share of trial time (tune/search/budget.py). The trainable is thin: it turns the sampled
config into a TrainConfig and calls tune.training.loop.fit with a hook that reports and checkpoints each
epoch (tune/search/trainable.py). The test split is never read here.

Steps: `plan` (space, data root, what each experiment may spend), `prepare` (decode, check weights,
run.json), then `run` (Ray, the caches, one Tuner per experiment: the search, or an --extend).
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any

import torch

from tune import FAKE, REAL
from tune.core import UserError, library_versions
from tune.core.processes import Interrupted, stop_on_signals
from tune.data import heldout
from tune.data.frames import Preprocess
from tune.data.heldout import load_recorded
from tune.data.images import ImageSet, check_video_leaks, load_split
from tune.metrics.classification import is_video_metric, metric_description
from tune.metrics.costs import COSTS, LatencySettings
from tune.runs.layout import (
    DataRecord,
    Extension,
    Run,
    RunRecord,
    exists,
    experiment_name,
    join,
    trial_folder,
    trials_root_for,
)
from tune.runs.leaderboard import write_leaderboard
from tune.runs.trials import SCORE, last_timestamp, mend_torn_results, torn_snapshots
from tune.search.budget import Budget
from tune.search.cluster import loopback_only, quiet_ray, slots, start_ray
from tune.search.objectives import result_keys
from tune.search.space import (
    BudgetSpec,
    DefineByRun,
    Param,
    Resources,
    SearchSpace,
    check_rule,
    load_space,
    resize_modes,
)
from tune.search.trainable import TrialData, run_trial
from tune.search.weights_check import check_weights


@dataclass(frozen=True)
class SearchOptions:
    space: Path | None  # None with --resume/--extend: the run's recorded space
    data: Path | None  # None with --resume/--extend: the run's recorded data root
    name: str
    results: Path  # where run folders live (results/ or --storage when it is a path)
    trials: int | None = None  # per architecture: the search's (overrides the space), or the extension's
    time_budget: float | None = None  # seconds of wall time: the search's (overrides the space), or the extension's
    address: str | None = None
    storage_uri: str | None = None  # --storage given as a URI: Ray writes trials there
    resume: bool = False
    extend: bool = False  # --extend: more trials (or time) for a finished run
    use_cache: bool = True
    skip_bad: bool = False
    cache_dir: Path | None = None
    max_failures: int = 2
    valid_extra: list[Path] | None = None  # --valid-extra: held-out validation sources (replace the space's; with
    # --resume/--extend: where the recorded ones are now)
    cache_gb: float | None = None  # --cache-gb: each node's feature-cache budget (None: tune/training/store.py's)


def trial_dirname(trial: Any) -> str:
    return trial_folder(trial.config.get("arch", "trial"), trial.trial_id)


def space_from_record(d: dict[str, Any]) -> SearchSpace:
    """The SearchSpace run.json recorded (dataclasses.asdict through JSON), for --resume and --extend."""
    archs = {a: {n: Param(**{**p, "choices": tuple(p.get("choices") or ())}) for n, p in ps.items()}
             for a, ps in d["architectures"].items()}
    return SearchSpace(**{**d, "budget": BudgetSpec(**d["budget"]), "resources": Resources(**d["resources"]),
                          "architectures": archs, "valid_extra": tuple(d.get("valid_extra", ())),
                          "objectives": tuple(tuple(o) for o in d.get("objectives", ())),
                          "latency": LatencySettings(**d.get("latency", {})), "prep": Preprocess.record(d.get("prep"))})


# --------------------------------------------------------------------------- plan
def previous_run(run: Run, opts: SearchOptions) -> RunRecord | None:
    """The run's record when continuing it (--resume, --extend); refuse what cannot work, before any write."""
    if opts.resume and opts.extend:
        raise UserError("--resume and --extend do not go together: --resume finishes an interrupted search "
                        "(an interrupted --extend too), --extend adds trials to a finished one")
    if opts.trials is not None and opts.trials < 1:
        raise UserError(f"{'--extend' if opts.extend else '--trials'} must be >= 1 (trials per architecture), "
                        f"got {opts.trials}")
    if not (opts.resume or opts.extend):
        if run.path.exists() and any(run.path.iterdir()):
            raise UserError(f"run folder {run.path} already exists; pass --resume to continue it, --extend N to add "
                            "trials to it, or choose another --name")
        return None
    if not run.exists():
        raise UserError(f"nothing to {'resume' if opts.resume else 'extend'}: {run.record_file} not found")
    old = run.read()
    problem = run.optuna_problem()
    if problem:
        raise UserError(f"cannot {'resume' if opts.resume else 'extend'} run {run.name}: {problem}, and a search "
                        "goes on from its Optuna studies; leaderboard, report (without the Optuna charts), finalize, "
                        "reproduce, evaluate, serve and export still work")
    if opts.storage_uri and join(opts.storage_uri, run.name) != run.trials_root(old):
        raise UserError(f"run {run.name} keeps its trials at {run.trials_root(old)} (run.json); --storage "
                        f"{opts.storage_uri} names another place")
    if opts.resume and old.experiment is None:
        raise UserError(f"run {run.name} was started by an earlier version (one Ray experiment per architecture) "
                        "and cannot be resumed by this one; its finished trials are kept: --extend adds to them")
    return old


def plan_space(opts: SearchOptions, old: RunRecord | None) -> tuple[SearchSpace, Path]:
    """The space and data root: recorded when continuing (whatever the command line's defaults say), else the
    space file with --trials / --time-budget over its budget (--time-budget alone: trials until time is up)."""
    if old is not None:  # --data and --valid-extra re-point the recorded data (prepare checks it is the same)
        return space_from_record(old.space), opts.data or Path(old.data.root)
    if opts.space is None or opts.data is None:
        raise UserError("a new search needs --space and --data")
    space = load_space(opts.space)
    b = space.budget
    # each flag replaces its part of the file's budget; a time budget alone also drops the file's trial
    # count, which would otherwise end a time-budgeted search early
    trials = opts.trials if opts.trials is not None else None if opts.time_budget is not None else b.trials
    time_s = opts.time_budget if opts.time_budget is not None else b.time_s
    space = replace(space, budget=replace(b, trials=trials, time_s=time_s))
    if opts.valid_extra is not None:
        space = replace(space, valid_extra=tuple(str(Path(d).absolute()) for d in opts.valid_extra))
    check_rule(space)  # a held-out or combined metric without held-out sources: one line, before any work
    return space, opts.data


def experiments(record: RunRecord, opts: SearchOptions) -> list[tuple[int, RunRecord | Extension]]:
    """(number, its part of run.json) of each experiment to run now: the search (0, the record itself), the
    new --extend, or with --resume every one (finished ones return at once)."""
    parts: list[tuple[int, RunRecord | Extension]] = list(enumerate([record, *record.extensions]))
    return parts[-1:] if opts.extend else parts if opts.resume else parts[:1]


def budget_of(archs: list[str], part: RunRecord | Extension) -> Budget:
    """An experiment's budget: the space's for the search, its own for an --extend."""
    if isinstance(part, RunRecord):
        return Budget(tuple(archs), part.space["budget"].get("trials"), part.space["budget"].get("time_s"))
    return Budget(tuple(archs), part.trials, part.time_s)


# --------------------------------------------------------------------------- prepare
def prepare(opts: SearchOptions, run: Run, old: RunRecord | None, space: SearchSpace,
            data_root: Path) -> tuple[RunRecord, SearchSpace, ImageSet, ImageSet, list[ImageSet]]:
    """Decode train, valid and the held-out sources, check the weights, and write run.json (refusing changed
    data, held-out sources that share images with the splits, or a reused name)."""
    cache = opts.cache_dir / "decoded" if opts.use_cache and opts.cache_dir else None
    t0 = time.time()
    # --no-cache: every trial decodes every image every epoch, like the usual pipeline (for comparison)
    check_video_leaks(data_root, ("train", "valid"))  # the test split: finalize checks it, the search never reads it
    train, valid = (load_split(data_root, s, space.image_size, skip_bad=opts.skip_bad, cache_dir=cache,
                               live=not opts.use_cache, prep=space.prep) for s in ("train", "valid"))
    check_video_metric(space, valid)
    extra, held_out = heldout.for_training(
        [Path(d) for d in space.valid_extra], space.image_size, train, valid, data_root,
        recorded=old.data.valid_extra if old else None, repoint=opts.valid_extra if old else None,
        what=f"run {opts.name} started",
        cache_dir=cache, skip_bad=opts.skip_bad, live=not opts.use_cache)
    sources = "".join(f"; held-out validation source {s.split}: {len(s)} images" for s in extra)
    test = "its files only compared by bytes with the held-out sources" if extra else "not read by the search"
    print(f"data: {len(train)} train / {len(valid)} valid images at {space.image_size}px{sources} "
          f"(decoded in {time.time() - t0:.1f}s); the test split: {test}", flush=True)
    space, weight_notes, skipped = check_weights(space)
    now = time.strftime("%Y-%m-%d %H:%M:%S")
    record = RunRecord(
        name=opts.name, space=asdict(space), space_file=str(opts.space),
        trials_root=trials_root_for(run, opts.storage_uri),
        data=DataRecord(root=str(data_root), train_fingerprint=train.fingerprint, valid_fingerprint=valid.fingerprint,
                        n_train=len(train), n_valid=len(valid),
                        classes={s.split: {"Fake": int((s.y == FAKE).sum()), "Real": int((s.y == REAL).sum())}
                                 for s in (train, valid)},
                        skipped=train.skipped + valid.skipped + [p for s in extra for p in s.skipped],
                        valid_extra=held_out or None),
        rule={"metric": space.metric, "mode": space.mode, "about": metric_description(space.metric)},
        weights=weight_notes, skipped=skipped, experiment=experiment_name(0), started_at=time.time(),
        use_cache=opts.use_cache, versions=library_versions(), started=now, address=opts.address)
    if old is not None:
        for split, s in (("train", train), ("valid", valid)):
            was = getattr(old.data, f"{split}_fingerprint")
            if was != s.fingerprint:
                raise UserError(f"cannot continue {opts.name}: the {split} data changed since the run started "
                                f"(fingerprint {was} -> {s.fingerprint})")
        # the run's own record goes on; a run of the earlier layout keeps experiment None (one per architecture)
        # the held-out folders as they are now (re-pointed or as recorded), in the space as in data.valid_extra
        moved = {"valid_extra": list(held_out["dirs"])} if held_out else {}
        record = replace(record, space_file=old.space_file, space={**old.space, **moved}, trials_root=old.trials_root,
                         started=old.started, started_at=old.started_at, experiment=old.experiment,
                         extensions=list(old.extensions), resumed=now if opts.resume else old.resumed)
    if opts.extend:
        k = len(record.extensions) + 1
        record.extensions.append(Extension(trials=opts.trials, time_s=opts.time_budget, experiment=experiment_name(k),
                                           started=now, started_at=time.time()))
    root = run.trials_root(record)
    for _, part in experiments(record, opts):  # a new experiment never lands on another run's trials
        location = join(root, str(part.experiment))
        if not opts.resume and exists(location):
            raise UserError(f"{location} already holds trials of an earlier search named {opts.name}; "
                            "choose another --name")
    run.write(record)
    return record, space, train, valid, extra


def crop_sets(opts: SearchOptions, space: SearchSpace, record: RunRecord,
              data_root: Path) -> tuple[ImageSet, ImageSet, list[ImageSet]] | None:
    """train, valid and the held-out sources as resize crop prepares them, when some trial can be resize crop
    (the same files as run.json's; a crop larger than the smallest image is one line, before any trial)."""
    if "crop" not in resize_modes(space):
        return None
    cache = opts.cache_dir / "decoded" if opts.use_cache and opts.cache_dir else None
    kw: dict[str, Any] = {"skip_bad": opts.skip_bad, "cache_dir": cache, "live": not opts.use_cache, "resize": "crop"}
    train, valid = (load_split(data_root, s, space.image_size, prep=space.prep, **kw) for s in ("train", "valid"))
    return train, valid, load_recorded(record.data.valid_extra, space.image_size, what="the search started", **kw)


def check_video_metric(space: SearchSpace, valid: ImageSet) -> None:
    """A video-level metric or objective needs videos in the valid split: refused in one line before any trial."""
    wanted = [n for n, _ in space.goals if is_video_metric(n)]
    if wanted and not valid.videos:
        raise UserError(f"{wanted[0]} scores videos, and the valid split holds none (expected videos "
                        "in valid/Fake and valid/Real; or select by a frame-level metric such as val_auc)")


# --------------------------------------------------------------------------- run
@contextmanager
def stop_gracefully() -> Iterator[list[int]]:
    """Around Tuner.fit: the first SIGINT or SIGTERM stops the trials and has Ray save the experiment (through
    the SIGUSR1 handler Ray Tune installs in fit, the one its own Ctrl-C handling calls; quiet_ray turns that
    off, so SIGTERM and SIGINT take the same path), and fit returns; a second one stops at once. Yields the
    signals received: the caller raises Interrupted after fit when there are any."""
    usr1 = signal.getsignal(signal.SIGUSR1)

    def ask_ray(signum: int, frame: FrameType | None) -> None:
        ray_handler = signal.getsignal(signal.SIGUSR1)
        if not callable(ray_handler) or ray_handler is usr1:  # fit has not begun: nothing to save yet
            raise Interrupted(signum)
        print(f"[search] {signal.Signals(signum).name}: stopping the trials and saving the search "
              "(again to stop at once)", file=sys.stderr, flush=True)
        logging.getLogger("ray.tune.tune").setLevel(logging.CRITICAL)  # its lines name Ray's resume, not ours
        ray_handler(signal.SIGUSR1, frame)

    try:
        with stop_on_signals(ask_ray) as received:
            yield received
    finally:
        signal.signal(signal.SIGUSR1, usr1)


def make_tuner(trainable: Any, space: SearchSpace, run: Run, record: RunRecord, k: int, budget: Budget,
               opts: SearchOptions, location: str, n_slots: int) -> Any:
    """A new Tuner for experiment k, or (--resume) the interrupted one restored."""
    # Ray, and the modules that import it at their top, only once run_search has set Ray's environment (quiet_ray,
    # loopback_only): the driver module itself imports without Ray, so `search --help` and the tests stay light.
    from ray import tune as ray_tune

    from tune.search.progress import Progress
    from tune.search.retention import Retention
    from tune.search.scheduler import ArchScheduler
    from tune.search.searcher import ArchSearcher, StudyPlan
    from tune.search.snapshots import KeepWhole, mend_checkpoints, put_back

    if opts.resume and ray_tune.Tuner.can_restore(location):
        why = put_back(location)  # KeepWhole's copy, when Ray's own was torn or stale when the driver died
        torn = torn_snapshots(location)
        if torn:
            raise UserError(f"cannot resume run {run.name}: Ray's experiment snapshot {torn[0]} in {location} was cut "
                            "short when the search was killed mid-copy, and no whole copy of it was kept; the "
                            "trials' own folders are intact (leaderboard and report read them)")
        print(f"[search] resuming {location}", flush=True)
        for line in ([why] if why else []) + mend_checkpoints(location):
            print(f"[search] {line}", flush=True)
        for path in mend_torn_results(location):
            print(f"[search] {path}: its last line was cut short by the interruption; dropped it", flush=True)
        return ray_tune.Tuner.restore(location, trainable=trainable, resume_unfinished=True, resume_errored=True)
    b = space.budget
    # One study per architecture, the same for every experiment of the run: an extension's TPE starts from
    # all earlier trials. Its own sampler seed, so its random draws are not the first experiment's again.
    # Several objectives: Optuna is told each (metric and mode become lists); ASHA still cuts on the score.
    multi = len(space.goals) > 1
    metric: Any = result_keys(space.goals, SCORE) if multi else SCORE
    mode: Any = [m for _, m in space.goals] if multi else space.mode
    startup = max(2, min(10, (budget.trials or 10) // 2))
    plans = {arch: StudyPlan(space=DefineByRun(space, arch), study_name=run.study_name(arch, record),
                             url=run.optuna_url, sampler=space.sampler, seed=space.seed + k, startup=startup,
                             metric=metric, mode=mode)
             for arch in budget.archs}
    scheduler = ArchScheduler(budget, metric=SCORE, mode=space.mode, max_t=b.max_epochs, grace_period=b.grace_period,
                              reduction_factor=b.reduction_factor)
    samples = budget.trials * len(budget.archs) if budget.trials and budget.seconds is None else -1
    keep_best = space.checkpoints == "keep_best"
    # Reusing trial actors saves ~0.8 s per trial on one machine. On a cluster it lets the first node whose
    # actor is up take every trial while the other nodes' actors are still starting (seen here: all 8 trials
    # of a two-node test ran on the head), so there each trial gets its own actor, and trials spread.
    return ray_tune.Tuner(
        trainable,
        tune_config=ray_tune.TuneConfig(
            metric=SCORE, mode=space.mode, search_alg=ArchSearcher(plans, budget, metric=SCORE, mode=space.mode),
            # Ray lets a searcher of its own have one trial pending at a time unless told how many may run:
            # with short trials the second slot's actor was never up before the first trial ended (seen:
            # 10 trials of 1-3 s, strictly one after the other on 2 slots).
            scheduler=scheduler, num_samples=samples, max_concurrent_trials=n_slots, reuse_actors=not opts.address,
            trial_dirname_creator=trial_dirname),
        run_config=ray_tune.RunConfig(
            name=location.rstrip("/").rsplit("/", 1)[-1], storage_path=location.rstrip("/").rsplit("/", 1)[0],
            verbose=0, callbacks=[Progress(scheduler, space.mode, cache=opts.cache_dir / "features"
                                           if opts.use_cache and opts.cache_dir else None),
                                  KeepWhole(), *([Retention()] if keep_best else [])],
            # keep_best: the two latest checkpoints while a trial runs (each holds the kept epoch's weights too,
            # and the one Ray's last experiment snapshot names must survive until the next snapshot, every 2 s:
            # quiet_ray; so not one), then Retention keeps the latest only. keep_all: every epoch's.
            checkpoint_config=ray_tune.CheckpointConfig(num_to_keep=2 if keep_best else None),
            failure_config=ray_tune.FailureConfig(max_failures=opts.max_failures)))


def run_search(opts: SearchOptions) -> Path:
    """A new search, the rest of an interrupted one (--resume), or more trials or time for a finished one
    (--extend: a new Ray experiment extendK, the same Optuna studies, so TPE goes on from them)."""
    quiet_ray()
    if not opts.address:
        loopback_only()
    import ray  # only now, after quiet_ray and loopback_only set its environment
    from ray import tune as ray_tune

    from tune.search.searcher import studies_at  # imports ray: likewise

    run = Run.named(opts.results, opts.name)
    old = previous_run(run, opts)
    space, data_root = plan_space(opts, old)
    record, space, train, valid, extra = prepare(opts, run, old, space, data_root)
    crop = crop_sets(opts, space, record, data_root)
    archs = list(space.architectures)
    started_ray = start_ray(opts.address)
    try:
        cuda = torch.cuda.is_available()
        resources = {"cpu": space.resources.cpus_per_trial, "gpu": space.resources.gpus_per_trial if cuda else 0}
        data = TrialData(train, valid, space.metric, space.mode, max(1, int(space.resources.cpus_per_trial)),
                         str(opts.cache_dir / "features") if opts.cache_dir else None, opts.use_cache, extra,
                         opts.cache_gb, space.latency,
                         tuple(n for n, _ in space.goals[1:] if n not in COSTS), crop)
        # No features are built here: each trial builds the files it needs when it first needs them
        # (tune/search/weights_check.py says why).
        n_slots = slots(space)
        for k, part in experiments(record, opts):
            location = join(run.trials_root(record), str(part.experiment))
            budget = budget_of(archs, part)
            began = part.started_at
            spent = max(0.0, (last_timestamp(location) or began) - began) if opts.resume and began else 0.0
            budget.start(slots=n_slots, spent=spent)
            # The trials learn the deadline from the trainable, made anew for each experiment and each session
            # (--resume passes it to Tuner.restore), so no pickle carries an old one; they stop at it mid-epoch.
            deadline = budget.deadline if budget.seconds is not None else None
            trainable = ray_tune.with_resources(
                ray_tune.with_parameters(run_trial, data=replace(data, deadline=deadline)), resources)
            print(f"[search] {', '.join(archs)} on {n_slots} slot(s): {budget.summary(spent)}"
                  f"{f' (extension {k})' if k else ''}; up "
                  f"to {space.budget.max_epochs} epochs a trial, one ASHA per architecture (grace "
                  f"{space.budget.grace_period}, reduction {space.budget.reduction_factor})", flush=True)
            with studies_at(run.optuna_url):  # Ray unpickles the searcher in Tuner.restore and again in fit
                tuner = make_tuner(trainable, space, run, record, k, budget, opts, location, n_slots)
                with stop_gracefully() as received:
                    tuner.fit()
            if received:  # Ray stopped the trials and saved the experiment: a stop, not the search's end
                raise Interrupted(received[0])
    finally:
        if started_ray:
            ray.shutdown()

    write_leaderboard(run.path)
    return run.path
