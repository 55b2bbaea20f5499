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

from tune.utils import UserError

# Allocator settings measured on a 2-core VM where page faults are expensive: about 2x on torch.
# Set before torch allocates anything; Ray workers inherit the environment.
os.environ.setdefault("MALLOC_MMAP_MAX_", "0")
os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", "100000000000")


SPACES = Path(__file__).resolve().parent.parent / "search_spaces"


def cache_root() -> Path:
    return Path(os.environ.get("TUNE_CACHE_DIR") or Path.home() / ".cache" / "deepfake-tune").absolute()


def builtin_data(*, n_per_class: int | None = None, size: int | None = None, seed: int = 0) -> Path:
    """The built-in dataset, generated once into the cache folder."""
    from tune import demo_data

    n = n_per_class or demo_data.DEFAULT_N_PER_CLASS
    s = size or demo_data.DEFAULT_SIZE
    out = cache_root() / f"demo-data-n{n}-s{s}-seed{seed}"
    if not (out / "train").is_dir():
        print(f"generating the built-in dataset into {out} ...", flush=True)
        demo_data.generate_demo_data(out, n_per_class=n, size=s, seed=seed)
    return out


def _add_train_options(p: argparse.ArgumentParser) -> None:
    from tune.config import TrainConfig

    d = TrainConfig()
    p.add_argument("--data", type=Path, help="dataset root (default: the built-in dataset)")
    p.add_argument("--arch", default=d.arch, help="custom_cnn or mobilenet_v2 (default: %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate (default: %(default)s)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--epochs", type=int, default=d.epochs, help="max epochs (default: %(default)s)")
    p.add_argument("--patience", type=int, default=d.patience, help="early-stopping patience on val loss")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--image-size", type=int, default=d.image_size)
    p.add_argument("--head-sizes", default="128", help="hidden widths of the head, e.g. 256,64 (default: 128)")
    p.add_argument("--dropout", type=float, default=d.dropout)
    p.add_argument("--conv-blocks", type=int, default=d.conv_blocks, help="custom_cnn: number of conv blocks")
    p.add_argument("--base-width", type=int, default=d.base_width, help="custom_cnn: channels of the first block")
    p.add_argument("--unfrozen-blocks", type=int, default=d.unfrozen_blocks,
                   help="mobilenet_v2: trainable blocks at the end of `features` (0 = head only)")
    p.add_argument("--weights", default=d.weights, help="mobilenet_v2: imagenet, none, or a .pth file")
    p.add_argument("--blur-prob", type=float, default=d.blur_prob, help="train-time Gaussian blur probability")
    p.add_argument("--jpeg-prob", type=float, default=d.jpeg_prob, help="train-time JPEG re-compression probability")
    p.add_argument("--no-hflip", action="store_true", help="turn off horizontal-flip augmentation")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--no-cache", action="store_true", help="recompute the frozen backbone every step")
    p.add_argument("--skip-bad-images", action="store_true", help="skip unreadable images and report the count")


def cmd_demo_data(a: argparse.Namespace) -> int:
    from tune import demo_data

    summary = demo_data.generate_demo_data(a.out, n_per_class=a.n_per_class or demo_data.DEFAULT_N_PER_CLASS,
                                           size=a.size or demo_data.DEFAULT_SIZE, seed=a.seed)
    print(f"wrote the built-in dataset to {a.out}: {summary.get('counts', summary)}")
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    import time

    from tune.config import TrainConfig
    from tune.data import load_split
    from tune.train import fit, save_run

    cfg = TrainConfig.from_dict({
        "arch": a.arch, "lr": a.lr, "weight_decay": a.weight_decay, "batch_size": a.batch_size, "epochs": a.epochs,
        "patience": a.patience, "seed": a.seed, "image_size": a.image_size, "head_sizes": a.head_sizes,
        "dropout": a.dropout, "conv_blocks": a.conv_blocks, "base_width": a.base_width,
        "unfrozen_blocks": a.unfrozen_blocks, "weights": a.weights, "hflip": not a.no_hflip,
        "blur_prob": a.blur_prob, "jpeg_prob": a.jpeg_prob, "threads": a.threads, "use_cache": not a.no_cache})
    from tune.models import check_arch

    check_arch(cfg.arch)  # fail fast, before reading any data
    root = (a.data or builtin_data()).absolute()
    cache = cache_root() / "decoded" if cfg.use_cache else None
    train = load_split(root, "train", cfg.image_size, skip_bad=a.skip_bad_images, cache_dir=cache)
    valid = load_split(root, "valid", cfg.image_size, skip_bad=a.skip_bad_images, cache_dir=cache)
    for s in (train, valid):
        if s.skipped:
            print(f"skipped {len(s.skipped)} bad image(s) in {s.split}")
    out = a.out or Path("results") / f"train-{cfg.arch}-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"training {cfg.arch} on {root}: {len(train)} train / {len(valid)} valid images at {cfg.image_size}px")
    result = fit(cfg, train, valid, cache_dir=cache_root() / "features" if cfg.use_cache else None)
    data = {"root": str(root), "train_fingerprint": train.fingerprint, "valid_fingerprint": valid.fingerprint,
            "n_train": len(train), "n_valid": len(valid), "skipped": train.skipped + valid.skipped}
    save_run(out, cfg, result, data, valid.y)
    b = result.best
    print(f"{result.ended} after {len(result.history)} epochs; best epoch {result.best_epoch}: "
          f"val_loss {b['val_loss']:.4f} val_auc {b['val_auc']:.4f} val_acc {b['val_accuracy']:.4f}")
    print(f"weights: {result.model.weights_source}; wrote {out}/best.pth, history.csv, record.json")
    return 0


def cmd_search(a: argparse.Namespace) -> int:
    from tune.search import SearchOptions, check_run_name, run_search

    space = a.space or SPACES / ("demo.yaml" if a.data is None else "default.yaml")
    name = check_run_name(a.name or time.strftime("search-%Y%m%d-%H%M%S"))
    uri = a.storage if a.storage and "://" in a.storage else None
    results = Path(a.storage) if a.storage and not uri else Path("results")
    root = (a.data or builtin_data()).absolute()
    opts = SearchOptions(space=space, data=root, name=name, results=results.absolute(), trials=a.trials,
                         address=a.address, storage_uri=uri, resume=a.resume, use_cache=not a.no_cache,
                         skip_bad=a.skip_bad_images, cache_dir=cache_root())
    run_dir = run_search(opts)
    print(f"search finished: {run_dir}")
    from tune.leaderboard import load_leaderboard, render

    print(render(load_leaderboard(run_dir), fmt="table", top=10))
    if not a.no_finalize:
        from tune.finalize import run_finalize

        run_finalize(run_dir, seeds=a.seeds, cache_dir=cache_root(), jobs=finalize_jobs(run_dir))
    return 0


def finalize_jobs(run_dir: Path) -> int:
    """As many retrainings at once as the machine has room for at the trials' CPUs per trial."""
    from tune.runinfo import read_run

    return max(1, (os.cpu_count() or 1) // read_run(run_dir).threads)


def cmd_leaderboard(a: argparse.Namespace) -> int:
    from tune.leaderboard import load_leaderboard, render, resolve_run

    run = resolve_run(a.run, Path(a.storage) if a.storage else Path("results"))
    print(render(load_leaderboard(run), fmt=a.format, top=a.top, arch=a.arch), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tune", description=__doc__.split("\n")[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("demo-data", help="write the built-in real-vs-fake dataset (offline, deterministic)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n-per-class", type=int, default=None, help="images per class over all splits")
    p.add_argument("--size", type=int, default=None, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo_data)

    p = sub.add_parser("train", help="one training run with early stopping (what every trial runs)")
    _add_train_options(p)
    p.add_argument("--out", type=Path, help="run folder (default: results/train-ARCH-TIME)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("search", help="Ray Tune search (Optuna TPE + ASHA) over both architectures")
    p.add_argument("--data", type=Path, help="dataset root (default: the built-in dataset with demo.yaml)")
    p.add_argument("--space", type=Path, help="search-space YAML (default: search_spaces/default.yaml, "
                   "or demo.yaml on the built-in data)")
    p.add_argument("--name", help="run name: a folder under results/ (default: search-DATE-TIME)")
    p.add_argument("--trials", type=int, help="trials per architecture (overrides the space file)")
    p.add_argument("--address", help="join an existing Ray cluster (e.g. 10.0.0.5:6379 or auto)")
    p.add_argument("--storage", help="folder for run folders (shared path on clusters) or a URI Ray accepts")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run of this --name")
    p.add_argument("--no-cache", action="store_true", help="decode and run the frozen backbone live")
    p.add_argument("--skip-bad-images", action="store_true")
    p.add_argument("--no-finalize", action="store_true", help="skip retraining the winners and the test evaluation")
    p.add_argument("--seeds", type=int, default=3, help="seeds per winner in the finalize step (default: 3)")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("leaderboard", help="one row per trial, best first (works while a search runs)")
    p.add_argument("run", nargs="?", help="run name under results/ or a run folder (default: newest)")
    p.add_argument("--storage", help="folder holding run folders (default: results)")
    p.add_argument("--top", type=int, help="show only the best K trials")
    p.add_argument("--arch", help="only this architecture")
    p.add_argument("--format", default="table", choices=["table", "csv", "markdown", "json"])
    p.set_defaults(func=cmd_leaderboard)

    from tune import evaluate, finalize, predict, reproduce

    for mod in (finalize, reproduce, predict, evaluate):
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    def show(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
        print(f"warning: {message}", file=sys.stderr)

    warnings.showwarning = show  # one readable line, not a source excerpt
    args = build_parser().parse_args(argv)
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
