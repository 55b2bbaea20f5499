"""The search driver: Ray Tune runs the trials, Optuna (TPE) decides what to try, ASHA when to stop.

Each architecture gets its own Tuner and Optuna study with the same number of trials, run one
after the other, so the comparison is fair. The trainable is thin: it turns the sampled config
into a TrainConfig and calls tune.train.fit with a hook that reports and checkpoints each epoch.
The test split is never read here.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from tune import FAKE, REAL
from tune.config import TrainConfig
from tune.data import ImageSet, load_split
from tune.runs import Run, exists, experiment_name, join, trial_folder, trials_root_for
from tune.space import Budget, DefineByRun, Param, Resources, SearchSpace, load_space
from tune.trials import SCORE, kept_score
from tune.utils import UserError, library_versions


@dataclass(frozen=True)
class SearchOptions:
    space: Path | None  # None with --resume/--extend: the run's recorded space
    data: Path | None  # None with --resume/--extend: the run's recorded data root
    name: str
    results: Path  # where run folders live (results/ or --storage when it is a path)
    trials: int | None = None
    address: str | None = None
    storage_uri: str | None = None  # --storage given as a URI: Ray writes trials there
    resume: bool = False
    use_cache: bool = True
    skip_bad: bool = False
    cache_dir: Path | None = None
    max_failures: int = 2
    extend: int | None = None  # --extend N: N more trials per architecture on a finished run


@dataclass
class TrialData:
    """What every trial needs besides its config; Ray puts it in the object store once per search."""

    train: ImageSet
    valid: ImageSet
    metric: str
    mode: str
    threads: int
    cache_dir: str | None
    use_cache: bool = True


def run_trial(config: dict[str, Any], data: TrialData) -> None:
    """The Ray Tune trainable (function API)."""
    import ray
    from ray import tune

    from tune.train import fit

    node_id = ray.get_runtime_context().get_node_id()  # which machine ran it (shown in cluster runs)
    cfg = TrainConfig.from_dict({**config, "threads": data.threads, "use_cache": data.use_cache})
    resume = None
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            resume = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=True)
    rows = list(resume["history"]) if resume else []

    def report(row: dict[str, Any], state: Any) -> None:
        rows.append(row)
        row[SCORE] = kept_score(rows, data.metric)[1]  # the metric of the weights this trial keeps
        row["node_id"] = node_id
        with tempfile.TemporaryDirectory() as d:
            torch.save(state(), Path(d) / "state.pt")
            tune.report(row, checkpoint=tune.Checkpoint.from_directory(d))

    cache = Path(data.cache_dir) if data.cache_dir else None
    fit(cfg, data.train, data.valid, report=report, resume=resume, cache_dir=cache, log=None)


def trial_dirname(trial: Any) -> str:
    return trial_folder(trial.config.get("arch", "trial"), trial.trial_id)


def check_weights(space: SearchSpace) -> tuple[SearchSpace, dict[str, str], dict[str, str]]:
    """Build each architecture once with its fixed weights (downloading them now, in the driver, when
    they come from a hub). An architecture whose weights cannot be had is skipped, never run with
    random weights: (space without it, weights source per arch, reason per skipped arch)."""
    from tune.archs import build_model
    from tune.weights import WeightsUnavailable

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
        from tune.archs import get_arch

        spec = get_arch(arch).hparams.get("unfrozen_blocks")
        return [int(spec.default)] if spec is not None else []
    if p.kind == "fixed":
        return [int(p.value)]
    if p.kind == "categorical":
        return sorted({int(c) for c in p.choices})
    return list(range(int(p.low), int(p.high) + 1, int(p.step or 1)))


def precompute_features(space: SearchSpace, arch: str, train: ImageSet, valid: ImageSet, cache_dir: Path) -> None:
    """The frozen-backbone cache for every depth the trials can ask for, built once before they start:
    the shortest prefix from the images, each longer one from the previous (tune/cache.py)."""
    from tune.cache import precompute
    from tune.train import make_model

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
    precompute(models, train, valid, cfg, cache_dir=cache_dir, train_view=shared)
    print(f"[{arch}] frozen-backbone features for unfrozen_blocks {depths}: {time.time() - t0:.1f}s", flush=True)


def quiet_ray() -> None:
    """Keep the screen for our own progress lines: Ray's INFO chatter and snapshot warnings go."""
    import logging

    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    for name in ("ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.WARNING)


def loopback_only() -> None:
    """Make a local Ray bind every server to 127.0.0.1. On Linux Ray otherwise swaps "localhost"
    for the machine's reachable IP and listens on all interfaces. Must run before `import ray`."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def space_from_record(d: dict[str, Any]) -> SearchSpace:
    """The SearchSpace run.json recorded (dataclasses.asdict through JSON), for --resume and --extend."""
    archs = {a: {n: Param(**{**p, "choices": tuple(p.get("choices") or ())}) for n, p in ps.items()}
             for a, ps in d["architectures"].items()}
    return SearchSpace(**{**d, "budget": Budget(**d["budget"]), "resources": Resources(**d["resources"]),
                          "architectures": archs})


def previous_run(run: Run, opts: SearchOptions) -> dict[str, Any] | None:
    """The run's record when continuing it (--resume, --extend); refuse what cannot work, before any write."""
    if opts.resume and opts.extend is not None:
        raise UserError("--resume and --extend do not go together: --resume finishes an interrupted search "
                        "(an interrupted --extend too), --extend adds trials to a finished one")
    if opts.extend is not None and opts.extend < 1:
        raise UserError(f"--extend must be >= 1 (trials per architecture), got {opts.extend}")
    if not (opts.resume or opts.extend):
        if run.path.exists() and any(run.path.iterdir()):
            raise UserError(f"run folder {run.path} already exists; pass --resume to continue it, --extend N to add "
                            "trials to it, or choose another --name")
        return None
    if not run.exists():
        raise UserError(f"nothing to {'resume' if opts.resume else 'extend'}: {run.record_file} not found")
    old = run.read()
    if opts.storage_uri and join(opts.storage_uri, run.name) != run.trials_root(old):
        raise UserError(f"run {run.name} keeps its trials at {run.trials_root(old)} (run.json); --storage "
                        f"{opts.storage_uri} names another place")
    return old


def run_search(opts: SearchOptions) -> Path:
    """A new search, the rest of an interrupted one (--resume), or N more trials per architecture
    (--extend: new Ray experiments ARCH-extendK, the same Optuna studies, so TPE goes on from them)."""
    quiet_ray()
    if not opts.address:
        loopback_only()
    import ray
    from optuna.samplers import TPESampler
    from optuna.storages import RDBStorage
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from tune.progress import Progress
    from tune.searcher import HonestOptunaSearch

    run = Run.named(opts.results, opts.name)
    old = previous_run(run, opts)
    if old is not None:  # continuing: the recorded space and data, whatever the command line's defaults say
        space = space_from_record(old["space"])
        data_root = opts.data or Path(old["data"]["root"])
    else:
        if opts.space is None or opts.data is None:
            raise UserError("a new search needs --space and --data")
        space = load_space(opts.space)
        data_root = opts.data
        if opts.trials is not None:
            if opts.trials < 1:
                raise UserError(f"--trials must be >= 1, got {opts.trials}")
            space = replace(space, budget=replace(space.budget, trials=opts.trials))
    budget = space.budget
    run.path.mkdir(parents=True, exist_ok=True)

    cache = opts.cache_dir / "decoded" if opts.use_cache and opts.cache_dir else None
    t0 = time.time()
    # --no-cache: every trial decodes every image every epoch, like the usual pipeline (for comparison)
    train = load_split(data_root, "train", space.image_size, skip_bad=opts.skip_bad, cache_dir=cache,
                       live=not opts.use_cache)
    valid = load_split(data_root, "valid", space.image_size, skip_bad=opts.skip_bad, cache_dir=cache,
                       live=not opts.use_cache)
    print(f"data: {len(train)} train / {len(valid)} valid images at {space.image_size}px "
          f"(decoded in {time.time() - t0:.1f}s); the test split is not read by the search", flush=True)
    space, weight_notes, skipped = check_weights(space)
    record = {"name": opts.name, "space_file": str(opts.space), "space": asdict(space),
              "data": {"root": str(data_root), "train_fingerprint": train.fingerprint,
                       "valid_fingerprint": valid.fingerprint, "n_train": len(train), "n_valid": len(valid),
                       "classes": {s.split: {"Fake": int((s.y == FAKE).sum()), "Real": int((s.y == REAL).sum())}
                                   for s in (train, valid)},
                       "skipped": train.skipped + valid.skipped},
              "weights": weight_notes, "skipped": skipped, "trials_root": trials_root_for(run, opts.storage_uri),
              "extensions": [],
              "use_cache": opts.use_cache, "versions": library_versions(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    if old is not None:
        for split, s in (("train", train), ("valid", valid)):
            if old["data"].get(f"{split}_fingerprint") != s.fingerprint:
                raise UserError(f"cannot continue {opts.name}: the {split} data changed since the run started "
                                f"(fingerprint {old['data'].get(f'{split}_fingerprint')} -> {s.fingerprint})")
        record.update({k: old[k] for k in ("space_file", "space", "trials_root", "started") if k in old})
        record["extensions"] = list(old.get("extensions", []))
        if opts.resume:
            record["resumed"] = time.strftime("%Y-%m-%d %H:%M:%S")
    if opts.extend:
        record["extensions"].append({"trials": opts.extend, "started": time.strftime("%Y-%m-%d %H:%M:%S")})
    last = len(record["extensions"])
    # (arch, experiment number, trials): the search is experiment 0, each --extend the next one
    trials_of = [budget.trials] + [int(e["trials"]) for e in record["extensions"]]
    plan = [(arch, k, trials_of[k]) for arch in space.architectures
            for k in ((last,) if opts.extend else range(last + 1) if opts.resume else (0,))]
    root = run.trials_root(record)
    for arch, k, _ in plan:  # a new experiment never lands on another run's trials (a reused name at a URI)
        location = join(root, experiment_name(arch, k))
        if not opts.resume and exists(location):
            raise UserError(f"{location} already holds trials of an earlier search named {opts.name}; "
                            "choose another --name")
    run.write(record)

    started_ray = False
    if not ray.is_initialized():
        if opts.address:
            ray.init(address=opts.address, log_to_driver=False)
        else:
            # address="local": always a fresh local Ray, never silently joining another one on this machine
            ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        started_ray = True
    try:
        cuda = torch.cuda.is_available()
        resources = {"cpu": space.resources.cpus_per_trial, "gpu": space.resources.gpus_per_trial if cuda else 0}
        data = TrialData(train, valid, space.metric, space.mode, max(1, int(space.resources.cpus_per_trial)),
                         str(opts.cache_dir / "features") if opts.cache_dir else None, opts.use_cache)
        trainable = tune.with_resources(tune.with_parameters(run_trial, data=data), resources)
        best_key = SCORE
        for arch, k, n in plan:
            if opts.use_cache and opts.cache_dir:
                precompute_features(space, arch, train, valid, opts.cache_dir / "features")
            name = experiment_name(arch, k)
            location = join(root, name)
            progress = Progress(arch, best_key, space.mode, n)
            if opts.resume and tune.Tuner.can_restore(location):
                print(f"[{arch}] resuming from {location}", flush=True)
                tuner = tune.Tuner.restore(location, trainable=trainable, resume_unfinished=True,
                                           resume_errored=True)
            else:
                # The same study for every experiment of an arch: an extension's TPE starts from all earlier
                # trials. Its own sampler seed, so its random draws are not the first experiment's again.
                searcher = HonestOptunaSearch(
                    space=DefineByRun(space, arch), metric=best_key, mode=space.mode,
                    sampler=TPESampler(seed=space.seed + k, n_startup_trials=max(2, min(10, budget.trials // 2))),
                    study_name=run.study_name(arch, record), storage=RDBStorage(run.optuna_url))
                scheduler = ASHAScheduler(time_attr="epoch", max_t=budget.max_epochs,
                                          grace_period=budget.grace_period,
                                          reduction_factor=budget.reduction_factor)
                # Reusing trial actors saves ~0.8 s per trial on one machine. On a cluster it lets the first
                # node whose actor is up take every trial while the other nodes' actors are still starting
                # (seen here: all 8 trials of a two-node test ran on the head), so there each trial gets
                # its own actor, and trials spread over the nodes.
                tuner = tune.Tuner(
                    trainable,
                    tune_config=tune.TuneConfig(
                        metric=best_key, mode=space.mode, search_alg=searcher, scheduler=scheduler,
                        num_samples=n, reuse_actors=not opts.address, trial_dirname_creator=trial_dirname),
                    run_config=tune.RunConfig(
                        name=name, storage_path=root, verbose=0, callbacks=[progress],
                        checkpoint_config=tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=best_key,
                                                                checkpoint_score_order=space.mode),
                        failure_config=tune.FailureConfig(max_failures=opts.max_failures)))
            print(f"[{arch}] {n} trials{f' more (extension {k})' if k else ''}, up to {budget.max_epochs} epochs "
                  f"each (ASHA grace {budget.grace_period}, reduction {budget.reduction_factor})", flush=True)
            tuner.fit()
            progress.summary()
    finally:
        if started_ray:
            ray.shutdown()
    from tune.leaderboard import write_leaderboard

    write_leaderboard(run.path)
    return run.path
