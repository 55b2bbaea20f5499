"""What several commands share: every option more than one command takes (RUN, --storage, --data, --model,
--valid-extra, --skip-bad-images, ...), each declared here once and checked as it is parsed (where the help
differs per command, it is a parameter; tests/test_cli_options.py fails on a flag declared twice), the built-in
data, the allocator. Importing this module does nothing: a command calls what it needs when it starts."""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
from collections.abc import Callable
from pathlib import Path

from tune.core import UserError, cache_root
from tune.data import builtin as demo_data
from tune.inference import MODEL_FILES
from tune.runs.layout import resolve_run, results_root
from tune.serving.serve import ModelChoice
from tune.training.store import parse_gb, set_budget

# Allocator settings measured on a 2-core VM where page faults are expensive: about 2x on torch. glibc reads
# these when a process starts, so set in the environment they reach the processes a command starts (its Ray
# workers); fast_allocator() applies them to the command's own process too.
ALLOCATOR_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}
Parser = argparse._ActionsContainer  # what add_argument belongs to: a parser, or a group of one (mutually exclusive)

SPACES = Path(__file__).resolve().parents[2] / "search_spaces"
VALID_EXTRA_HELP = ("held-out validation sources, scored every epoch and never trained on: folders with Fake/ and "
                    "Real/ (or 1_fake/ and 0_real/), or parents of one such folder per generator")
STORAGE_HELP = ("folder holding run folders, or the URI the search's --storage named (then the run folder is in "
                "results/) (default: results)")


def count(flag: str) -> Callable[[str], int]:
    """An argparse type: a whole number >= 1. Checked as the arguments are parsed, so `search --seeds 0` fails
    before a search runs; the error is the project's one line (a UserError: tune.cli.main prints it)."""
    def parse(text: str) -> int:
        n = int(text)  # not a number: argparse's own "invalid int value" message
        if n < 1:
            raise UserError(f"{flag} must be >= 1, got {n}")
        return n

    parse.__name__ = "int"  # argparse names the type in its message for a non-number
    return parse


def add_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", nargs="?", help="run name under results/ or a run folder (default: newest)")


def add_run_flag(p: Parser, help: str) -> None:
    """--run RUN: a run whose models the command uses (serve, export, evaluate say which)."""
    p.add_argument("--run", help=help)


def add_arch(p: Parser, help: str, *, default: str | None = None) -> None:
    """--arch NAME: an architecture (train's to train, leaderboard's to show, serve's and export's model)."""
    p.add_argument("--arch", default=default, help=help)


def add_data(p: argparse.ArgumentParser, help: str) -> None:
    """--data: a dataset root (each command says what it does with it)."""
    p.add_argument("--data", type=Path, help=help)


def add_valid_extra(p: argparse.ArgumentParser, help: str = VALID_EXTRA_HELP) -> None:
    """--valid-extra DIR [DIR ...]: held-out validation sources (train, search), or where a run's are now."""
    p.add_argument("--valid-extra", type=Path, nargs="+", metavar="DIR", help=help)


def add_moved_data(p: argparse.ArgumentParser) -> None:
    """--data and --valid-extra for a command that reads a finished run's data: where it is now, if it moved."""
    add_data(p, "where the run's dataset root is now, if it moved since the search (the same images, checked by "
             "content fingerprint; default: the root run.json records)")
    add_valid_extra(p, "where the run's held-out validation sources are now, if they moved (checked by content "
                    "fingerprint; default: as recorded)")


def add_skip_bad_images(p: argparse.ArgumentParser) -> None:
    p.add_argument("--skip-bad-images", action="store_true", help="skip unreadable images and report the count")


def add_no_cache(p: argparse.ArgumentParser, help: str) -> None:
    """--no-cache: decode and run the frozen backbone live (train's TrainConfig.use_cache, search's trials)."""
    p.add_argument("--no-cache", dest="use_cache", action="store_false", help=help)


def add_seed(p: argparse.ArgumentParser, help: str, *, default: int = 0) -> None:
    p.add_argument("--seed", type=int, default=default, help=help)


def add_seeds(p: argparse.ArgumentParser, help: str) -> None:
    """--seeds K: how many retrainings per model finalize runs (finalize, and search's finalize step)."""
    p.add_argument("--seeds", type=count("--seeds"), default=3, help=help)


def add_threads(p: argparse.ArgumentParser, help: str, *, default: int = 0) -> None:
    p.add_argument("--threads", type=int, default=default, help=help)


def add_address(p: argparse.ArgumentParser, help: str) -> None:
    """--address: an existing Ray cluster to use instead of a local Ray (search, serve, finalize, evaluate)."""
    p.add_argument("--address", help=help)


def add_storage(p: argparse.ArgumentParser, help: str = STORAGE_HELP) -> None:
    p.add_argument("--storage", help=help)


def add_model(p: Parser, *, required: bool = False, repeatable: bool = False) -> None:
    """--model: a model file and its record (tune.inference.MODEL_FILES); `repeatable`: one or more."""
    how = {"action": "append", "help": f"{MODEL_FILES}; repeatable"} if repeatable else \
        {"required": required, "help": MODEL_FILES}
    p.add_argument("--model", type=Path, **how)


def add_model_choice(p: argparse.ArgumentParser, *, run_help: str, arch_help: str) -> None:
    """--model, or --run [--arch], and --storage: which model serve and export use (model_choice reads them)."""
    add_model(p)
    add_run_flag(p, run_help)
    add_arch(p, arch_help)
    add_storage(p)


def add_out(p: argparse.ArgumentParser, help: str | None = None, *, required: bool = False) -> None:
    """--out PATH: where the command writes (each command says what: a folder or a file)."""
    p.add_argument("--out", type=Path, required=required, help=help)


def add_format(p: argparse.ArgumentParser, choices: tuple[str, ...], default: str) -> None:
    """--format: what the command writes (leaderboard: a table or data; export: a model format)."""
    p.add_argument("--format", default=default, choices=choices)


def add_cache_gb(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-gb", metavar="GB", help="disk budget of the frozen-prefix feature cache on each node, "
                   "in GB (1e9 bytes): least recently used files are evicted to stay under it, a file in use never "
                   "is, and a trial whose file does not fit trains live (default: half of the cache folder's free "
                   "disk plus what the cache already holds, at most 200)")


def model_choice(a: argparse.Namespace) -> ModelChoice:
    """What add_model_choice's options name, as serve and export pass it on."""
    return ModelChoice(model=a.model, run=a.run, arch=a.arch, storage=a.storage)


def cache_budget(a: argparse.Namespace) -> float | None:
    """--cache-gb, checked, and made this process's budget (and its workers')."""
    gb = parse_gb(a.cache_gb)
    set_budget(gb)
    return gb


def run_folder(a: argparse.Namespace) -> Path:
    """The run the command names (its `run` argument and --storage), or the newest."""
    return resolve_run(a.run, results_root(a.storage))


def allocator_environment() -> None:
    """ALLOCATOR_ENV into this process's environment, where a user has not set them: every process started
    from now on (Ray's workers, finalize's jobs) starts with them."""
    for name, value in ALLOCATOR_ENV.items():
        os.environ.setdefault(name, value)


def fast_allocator() -> None:
    """ALLOCATOR_ENV for the processes this one starts (allocator_environment) and, through glibc's mallopt,
    for this running process: freed memory is kept for reuse instead of going back to the OS and faulting in
    again. EfficientNet-Lite0 at 128 px, batch 32, 2 threads: 104 -> 189 img/s. Without glibc (musl, macOS)
    there is nothing to do. Every command calls it as it starts (tune.cli.main)."""
    allocator_environment()
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


def builtin_data(*, n_per_class: int | None = None, size: int | None = None, seed: int = 0) -> Path:
    """The built-in dataset, generated once into the cache folder."""
    n = n_per_class or demo_data.DEFAULT_N_PER_CLASS
    s = size or demo_data.DEFAULT_SIZE
    out = cache_root() / f"demo-data-n{n}-s{s}-seed{seed}"
    if not (out / "train").is_dir():
        print(f"generating the built-in dataset into {out} ...", flush=True)
        demo_data.generate_demo_data(out, n_per_class=n, size=s, seed=seed)
    return out
