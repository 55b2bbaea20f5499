"""Command line: `python -m tune <command>`. Each command parses its options into typed objects
and hands them to the module that does the work; user errors become one line and exit code 2."""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tune.core import UserError, cache_root

# Allocator settings measured on a 2-core VM where page faults are expensive: about 2x on torch.
# glibc reads these when a process starts, so they reach the Ray workers this process starts;
# fast_allocator() applies them to this process too.
os.environ.setdefault("MALLOC_MMAP_MAX_", "0")
os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", "100000000000")


def fast_allocator() -> None:
    """The settings above for this running process, through glibc's mallopt: freed memory is kept for
    reuse instead of going back to the OS and faulting in again. EfficientNet-Lite0 at 128 px, batch
    32, 2 threads: 104 -> 189 img/s. Without glibc (musl, macOS) there is nothing to do."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None)
    except OSError:
        mallopt = None
    if mallopt is not None and os.environ.get("MALLOC_MMAP_MAX_") == "0":  # a user's own choice stands
        m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
        mallopt(m_mmap_max, 0)
        mallopt(m_trim_threshold, 2**31 - 1)


SPACES = Path(__file__).resolve().parents[2] / "search_spaces"
VALID_EXTRA_HELP = ("held-out validation sources, scored every epoch and never trained on: folders with Fake/ and "
                    "Real/ (or 1_fake/ and 0_real/), or parents of one such folder per generator")


def builtin_data(*, n_per_class: int | None = None, size: int | None = None, seed: int = 0) -> Path:
    """The built-in dataset, generated once into the cache folder."""
    from tune.data import builtin as demo_data

    n = n_per_class or demo_data.DEFAULT_N_PER_CLASS
    s = size or demo_data.DEFAULT_SIZE
    out = cache_root() / f"demo-data-n{n}-s{s}-seed{seed}"
    if not (out / "train").is_dir():
        print(f"generating the built-in dataset into {out} ...", flush=True)
        demo_data.generate_demo_data(out, n_per_class=n, size=s, seed=seed)
    return out


def _add_train_options(p: argparse.ArgumentParser) -> None:
    """Flags from the declarations: TrainConfig's options, then every registered architecture's own
    hyperparameters (left unset, an architecture's default applies)."""
    from tune.models.registry import REGISTRY
    from tune.training.config import options

    p.add_argument("--data", type=Path, help="dataset root (default: the built-in dataset)")
    for f in options():
        flag = f.metadata["flag"] or "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            p.add_argument(flag, dest=f.name, action="store_false" if f.default else "store_true",
                           help=f.metadata["help"])
        else:
            p.add_argument(flag, dest=f.name, type=type(f.default), default=f.default, choices=f.metadata["choices"],
                           help=f"{f.metadata['help']} (default: %(default)s)")
    owners: dict[str, list[str]] = {}
    for arch in REGISTRY.values():
        for name in arch.hparams:
            owners.setdefault(name, []).append(arch.name)
    for name, archs in owners.items():
        spec = next(a.hparams[name] for a in REGISTRY.values() if name in a.hparams)
        kind = {"int": int, "float": float}.get(spec.kind, str)
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None,
                       help=f"{', '.join(archs)}: {spec.help} (default: the architecture's)")
    p.add_argument("--skip-bad-images", action="store_true", help="skip unreadable images and report the count")
    p.add_argument("--valid-extra", type=Path, nargs="+", metavar="DIR", help=VALID_EXTRA_HELP)


def train_config(a: argparse.Namespace) -> Any:
    """The TrainConfig the flags describe; an architecture's hyperparameter given to another is refused."""
    from tune.models.registry import REGISTRY
    from tune.training.config import TrainConfig, options

    flat = {f.name: getattr(a, f.name) for f in options()}
    hp_names = {n for arch in REGISTRY.values() for n in arch.hparams}
    flat.update({n: getattr(a, n) for n in hp_names if getattr(a, n, None) is not None})
    return TrainConfig.from_dict(flat)


def cmd_demo_data(a: argparse.Namespace) -> int:
    from tune.data import builtin as demo_data

    summary = demo_data.generate_demo_data(a.out, n_per_class=a.n_per_class or demo_data.DEFAULT_N_PER_CLASS,
                                           size=a.size or demo_data.DEFAULT_SIZE, seed=a.seed, tiles_seed=a.tiles_seed)
    print(f"wrote the built-in dataset to {a.out}: {summary.get('counts', summary)}")
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    import time

    from tune.data.heldout import for_training
    from tune.data.images import load_split
    from tune.metrics.classification import needs_heldout
    from tune.runs.layout import HISTORY, RECORD, WEIGHTS
    from tune.training.loop import fit
    from tune.training.records import save_run

    cfg = train_config(a)  # fails fast, before reading any data
    if needs_heldout(cfg.monitor) and not a.valid_extra:
        raise UserError(f"--monitor {cfg.monitor} needs held-out validation sources: give --valid-extra DIR [DIR ...]")
    root = (a.data or builtin_data()).absolute()
    cache = cache_root() / "decoded" if cfg.use_cache else None
    train = load_split(root, "train", cfg.image_size, skip_bad=a.skip_bad_images, cache_dir=cache)
    valid = load_split(root, "valid", cfg.image_size, skip_bad=a.skip_bad_images, cache_dir=cache)
    extra, held_out = for_training(a.valid_extra or [], cfg.image_size, train, valid, root, cache_dir=cache,
                                   skip_bad=a.skip_bad_images)
    for s in (train, valid, *extra):
        if s.skipped:
            print(f"skipped {len(s.skipped)} bad image(s) in {s.split}")
    out = a.out or Path("results") / f"train-{cfg.arch}-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"training {cfg.arch} on {root}: {len(train)} train / {len(valid)} valid images at {cfg.image_size}px"
          + "".join(f"; held-out {s.split}: {len(s)}" for s in extra))
    result = fit(cfg, train, valid, extra=extra, cache_dir=cache_root() / "features" if cfg.use_cache else None)
    data = {"root": str(root), "train_fingerprint": train.fingerprint, "valid_fingerprint": valid.fingerprint,
            "n_train": len(train), "n_valid": len(valid),
            "skipped": train.skipped + valid.skipped + [p for s in extra for p in s.skipped],
            **({"valid_extra": held_out} if held_out else {})}
    save_run(out, cfg, result, data, valid.y)
    b = result.best
    print(f"{result.ended} after {len(result.history)} epochs; best epoch {result.best_epoch}: "
          f"val_loss {b['val_loss']:.4f} val_auc {b['val_auc']:.4f} val_acc {b['val_accuracy']:.4f}"
          + (f" xval_auc {b['xval_auc']:.4f}" if "xval_auc" in b else ""))
    print(f"weights: {result.model.weights_source}; wrote {out / WEIGHTS}, {HISTORY}, {RECORD}")
    return 0


def cmd_search(a: argparse.Namespace) -> int:
    from tune.runs.layout import check_run_name, is_uri, results_root
    from tune.search.budget import parse_duration
    from tune.search.driver import SearchOptions, run_search

    going_on = a.resume or a.extend is not None  # the run's recorded space and data, unless given
    trials, time_budget = a.trials, parse_duration(a.time_budget) if a.time_budget is not None else None
    if a.extend is not None:
        if a.name is None or a.space is not None or a.trials is not None or a.time_budget is not None:
            raise UserError("--extend N|DURATION adds N trials per architecture (or DURATION of search) to the run "
                            "--name names, with its recorded search space: give --name, and leave out --space, "
                            "--trials and --time-budget")
        if a.extend.strip().lstrip("-").isdigit():
            trials = int(a.extend)
        else:
            time_budget = parse_duration(a.extend, "--extend")
    space = a.space or (None if going_on else SPACES / ("demo.yaml" if a.data is None else "default.yaml"))
    name = check_run_name(a.name or time.strftime("search-%Y%m%d-%H%M%S"))
    root = a.data.absolute() if a.data else None if going_on else builtin_data()
    opts = SearchOptions(space=space, data=root, name=name, results=results_root(a.storage).absolute(),
                         trials=trials, time_budget=time_budget, address=a.address,
                         storage_uri=a.storage if is_uri(a.storage) else None, resume=a.resume,
                         extend=a.extend is not None, use_cache=not a.no_cache, skip_bad=a.skip_bad_images,
                         cache_dir=cache_root(), valid_extra=a.valid_extra)
    run_dir = run_search(opts)
    print(f"search finished: {run_dir}")
    from tune.runs.leaderboard import load_leaderboard, render, trial_counts

    board = load_leaderboard(run_dir)
    print(render(board, fmt="table", top=10))
    print(trial_counts(board))
    if not a.no_finalize:
        from tune.evaluation.finalize import finalize_jobs, run_finalize

        run_finalize(run_dir, seeds=a.seeds, cache_dir=cache_root(), jobs=finalize_jobs(run_dir))
    else:
        from tune.reports.html import write_report

        print(f"wrote {write_report(run_dir)}")
    return 0


def cmd_archs(a: argparse.Namespace) -> int:
    """Every registered architecture: what it is, its hyperparameters, and whether its weights are here."""
    from tune.models.registry import build_model, get_arch, list_archs
    from tune.models.weights import WeightsUnavailable

    for name in a.names or list_archs():
        arch = get_arch(name)
        print(f"{name}: {arch.about}")
        for key, hp in arch.hparams.items():
            rng = f" [{hp.low}..{hp.high}]" if hp.low is not None else ""
            print(f"  {key:<16} {hp.kind}{rng}, default {hp.default!r}: {hp.help}")
        print(f"  input: RGB in [0, 1], then (x - {list(arch.mean)}) / {list(arch.std)}")
        if arch.pretrained:
            try:
                source = build_model(name).weights_source
                print(f"  default weights: available ({source})")
            except WeightsUnavailable as e:
                print(f"  default weights: NOT available here: {e}")
    return 0


def cmd_leaderboard(a: argparse.Namespace) -> int:
    from tune.runs.layout import Run, resolve_run, results_root
    from tune.runs.leaderboard import load_leaderboard, render, trial_counts

    run = Run(resolve_run(a.run, results_root(a.storage)))
    board = load_leaderboard(run.path)
    if board.empty and a.format == "table":
        print(f"run {run.name}: no trials yet in {run.trials_root(run.read())}")
        return 0
    out = render(board, fmt=a.format, top=a.top, arch=a.arch)
    print(out, end="" if out.endswith("\n") else "\n")
    if a.format == "table":
        print(trial_counts(board))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tune", description=__doc__.split("\n")[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("demo-data", help="write the built-in real-vs-fake dataset (offline, deterministic)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n-per-class", type=int, default=None, help="images per class over all splits")
    p.add_argument("--size", type=int, default=None, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0, help="the generator (its autoencoder) and every random draw "
                   "(default: 0)")
    p.add_argument("--tiles-seed", type=int, help="how the photos are cut into tiles dealt to the splits (default: "
                   "--seed); datasets of several generators with one --tiles-seed share no photo region across "
                   "splits")
    p.set_defaults(func=cmd_demo_data)

    p = sub.add_parser("train", help="one training run with early stopping (what every trial runs)")
    _add_train_options(p)
    p.add_argument("--out", type=Path, help="run folder (default: results/train-ARCH-TIME)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("search", help="Ray Tune search (Optuna TPE + ASHA) over every architecture of the space")
    p.add_argument("--data", type=Path, help="dataset root (default: the built-in dataset with demo.yaml)")
    p.add_argument("--space", type=Path, help="search-space YAML (default: search_spaces/default.yaml, "
                   "or demo.yaml on the built-in data)")
    p.add_argument("--name", help="run name: a folder under results/ (default: search-DATE-TIME)")
    p.add_argument("--trials", type=int, help="trials per architecture (overrides the space file's)")
    p.add_argument("--time-budget", metavar="DURATION", help="wall time of the whole search, e.g. 20m or 1.5h: "
                   "each architecture gets an equal share of the trial time and trials are sampled until it is "
                   "spent (with --trials too, whichever runs out first)")
    p.add_argument("--address", help="join an existing Ray cluster (e.g. 10.0.0.5:6379 or auto)")
    p.add_argument("--storage", help="folder for run folders (shared path on clusters), or a URI Ray accepts "
                   "(s3://..., file://...): then the trials go there and the run folder stays in results/")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run of this --name")
    p.add_argument("--extend", metavar="N|DURATION", help="add N trials per architecture, or DURATION more of "
                   "search (e.g. 10m), to the finished run --name (TPE goes on from its Optuna studies)")
    p.add_argument("--no-cache", action="store_true", help="turn the decoded-image and frozen-backbone caches off: "
                   "decode and run the frozen backbone live at every use")
    p.add_argument("--skip-bad-images", action="store_true")
    p.add_argument("--valid-extra", type=Path, nargs="+", metavar="DIR", help=VALID_EXTRA_HELP + (
                   " (replaces the space file's valid_extra; the space's metric may then be xval_*, mean_* or "
                   "min_*, e.g. mean_auc)"))
    p.add_argument("--no-finalize", action="store_true", help="skip retraining the winners and the test evaluation")
    p.add_argument("--seeds", type=int, default=3, help="seeds per winner in the finalize step (default: 3)")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("archs", help="list the registered architectures, their hyperparameters and weights")
    p.add_argument("names", nargs="*", help="only these (also timm/NAME for any timm backbone)")
    p.set_defaults(func=cmd_archs)

    p = sub.add_parser("leaderboard", help="one row per trial, best first (works while a search runs)")
    p.add_argument("run", nargs="?", help="run name under results/ or a run folder (default: newest)")
    p.add_argument("--storage", help="folder holding run folders, or the URI the search's --storage named "
                   "(then the run folder is in results/) (default: results)")
    p.add_argument("--top", type=int, help="show only the best K trials")
    p.add_argument("--arch", help="only this architecture")
    p.add_argument("--format", default="table", choices=["table", "csv", "markdown", "json"])
    p.set_defaults(func=cmd_leaderboard)

    from tune.evaluation import evaluate, finalize, reproduce
    from tune.reports import html as html_report
    from tune.serving import export, predict, serve

    for mod in (finalize, reproduce, predict, evaluate, html_report, serve, export):
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    def show(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
        print(f"warning: {message}", file=sys.stderr)

    warnings.showwarning = show  # one readable line, not a source excerpt
    args = build_parser().parse_args(argv)
    fast_allocator()
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # unwritable results folder, full disk...: results are written atomically, so
        # nothing is half-written; say what and where in one line.
        where = f": {e.filename}" if e.filename else ""
        print(f"error: cannot read or write results ({e.strerror or e}){where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
