"""The per-node disk budget of the cache folder: room for a new file by least-recently-used eviction,
and leases that mark a file in use so that nothing evicts it.

Locks are `fcntl.flock` on the files themselves, so they hold across the trial processes of one node and
vanish with a process that dies:
- a reader holds a *shared* lock on a cached file for as long as it uses it (`lease`); eviction and
  `cache clear` take an *exclusive* lock without waiting, so a file in use is skipped, never removed;
- a file's last use is its mtime, touched at every lease (atime is often not kept: noatime, relatime);
- making room and creating a new file's temporary copy happen under one folder-wide lock, and the
  temporary copy has its full size at once (`allocate`), so two trials never both count the same room.

The budget covers the stored features and augmented views, the files this folder can rebuild at will;
decoded images are left to their owner (tune/data/images.py). Without `TUNE_CACHE_GB` (set by the
commands' --cache-gb) it is half of what the folder's filesystem could hold for the cache at first use
(free space plus the cache itself), at most DEFAULT_CAP_GB.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from tune.core import UserError, atomic_write_json

BUDGET_ENV = "TUNE_CACHE_GB"  # the --cache-gb of search, finalize and reproduce, inherited by their workers
DEFAULT_SHARE = 0.5
DEFAULT_CAP_GB = 200.0
TMP = ".tmp.npy"  # a file being built: counted in the room used, never evicted
STORED = ("features-*.npy",)  # what the budget counts and may evict


def parse_gb(value: str | float | None, what: str = "--cache-gb") -> float | None:
    if value is None or value == "":
        return None
    try:
        gb = float(value)
    except ValueError:
        raise UserError(f"{what}: expected a number of gigabytes, got {value!r}") from None
    if gb < 0:
        raise UserError(f"{what}: expected >= 0 gigabytes, got {value}")
    return gb


def set_budget(gb: float | None) -> None:
    """Make --cache-gb this process's budget and its children's (Ray workers started from it, finalize's jobs)."""
    if gb is not None:
        os.environ[BUDGET_ENV] = repr(float(gb))


def stored_files(folder: Path) -> list[Path]:
    return sorted(p for pattern in STORED for p in Path(folder).glob(pattern) if not p.name.endswith(TMP))


def building(folder: Path) -> list[Path]:
    return sorted(Path(folder).glob(f"*{TMP}"))


def used_bytes(folder: Path) -> int:
    """Bytes of every stored file and every temporary one being built."""
    total = 0
    for p in [*stored_files(folder), *building(folder)]:
        try:
            total += p.stat().st_size
        except FileNotFoundError:  # evicted or renamed meanwhile
            pass
    return total


def budget_bytes(folder: Path) -> int:
    gb = parse_gb(os.environ.get(BUDGET_ENV), BUDGET_ENV)
    if gb is not None:
        return int(gb * 1e9)
    Path(folder).mkdir(parents=True, exist_ok=True)
    room = shutil.disk_usage(folder).free + used_bytes(folder)
    return int(min(DEFAULT_SHARE * room, DEFAULT_CAP_GB * 1e9))


def in_use(path: Path) -> bool:
    """Whether some process holds a lease on `path` (tried without waiting)."""
    try:
        with open(path, "rb") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            return False
    except FileNotFoundError:
        return False


def remove(path: Path) -> bool:
    """Delete a stored file and its sidecars unless it is in use: the exclusive lock is held while unlinking,
    so a reader that opened it just before finds (by inode, in `lease`) that it is gone and looks again."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return False
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        path.unlink(missing_ok=True)
        path.with_suffix(".json").unlink(missing_ok=True)
    return True


def lease(path: Path) -> IO[bytes] | None:
    """A shared lock on `path` (held until the returned file is closed) and its last use set to now; None
    when it does not exist (or was evicted while we waited)."""
    while True:
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            return None
        fcntl.flock(f, fcntl.LOCK_SH)
        try:
            same = os.fstat(f.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            try:
                os.utime(path)
            except OSError:  # a read-only cache still serves
                pass
            return f
        f.close()
        if not path.exists():
            return None


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on the file `path` (created empty if missing; lock files are never deleted, so two
    processes can never hold "the" lock on two different inodes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def make_room(folder: Path, need: int, budget: int) -> bool:
    """Evict least-recently-used stored files not in use until `need` more bytes fit the budget."""
    used = used_bytes(folder)
    if used + need <= budget:
        return True
    by_age = []
    for p in stored_files(folder):
        try:
            by_age.append((p.stat().st_mtime, p))
        except FileNotFoundError:
            pass
    for _, p in sorted(by_age):
        size = p.stat().st_size if p.exists() else 0
        if remove(p):
            used -= size
            if used + need <= budget:
                return True
    return False


def allocate(path: Path, nbytes: int) -> None:
    """Give the file its full size on disk now: a full disk is then an OSError here, not a SIGBUS later
    when the memory map's pages are written back."""
    with open(path, "r+b") as f:
        os.posix_fallocate(f.fileno(), 0, nbytes)


def gb(n: float) -> str:
    """Bytes for people, in decimal units as --cache-gb counts them."""
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def get_or_build(target: Path, shape: tuple[int, ...], dtype: str, fill: Callable[[np.ndarray], None],
                 meta: dict[str, Any]) -> tuple[IO[bytes] | None, str]:
    """A lease on `target`, built first by `fill(memmap)` when missing: (lease, "") or (None, why not).

    One builder per file on the node (a lock file beside it; the others wait, then read its file). The
    features are written batch by batch into a memory-mapped temporary file in the same folder, renamed
    when complete; a full disk or a budget too small for the file leaves nothing behind.
    """
    f = lease(target)
    if f is not None:
        return f, ""
    folder = target.parent
    with locked(target.with_suffix(".lock")):
        f = lease(target)
        if f is not None:
            return f, ""
        need = 128 + int(np.prod(shape)) * np.dtype(dtype).itemsize
        tmp = target.with_name(f"{target.stem}.{os.getpid()}{TMP}")
        try:
            with locked(folder / ".budget.lock"):
                budget = budget_bytes(folder)
                if need > budget:
                    return None, f"it needs {gb(need)}, more than the whole cache budget ({gb(budget)})"
                if not make_room(folder, need, budget):
                    return None, f"the cache budget ({gb(budget)}) is taken by files in use"
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
                allocate(tmp, os.path.getsize(tmp))
            fill(out)
            out.flush()
            del out
            atomic_write_json(target.with_suffix(".json"), meta)
            f = open(tmp, "rb")
            fcntl.flock(f, fcntl.LOCK_SH)  # held across the rename: nothing can evict it before we use it
            os.replace(tmp, target)
            return f, ""
        except OSError as e:
            tmp.unlink(missing_ok=True)
            if e.errno != errno.ENOSPC:
                raise
            target.with_suffix(".json").unlink(missing_ok=True)
            return None, f"the disk is full ({folder})"
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


@dataclass(frozen=True)
class Entry:
    """One cached file, as `python -m tune cache ls` shows it."""

    path: Path
    kind: str  # decoded, features (plain images through a frozen prefix) or views (augmented ones)
    arch: str
    depth: str  # frozen units
    dtype: str
    size: int
    last_used: float  # mtime: touched at every lease

    @property
    def in_use(self) -> bool:
        return in_use(self.path)


def entries(root: Path) -> list[Entry]:
    """The caches under the cache folder `root` (its decoded/ and features/), most recently used first."""
    out = []
    for p in sorted(Path(root, "decoded").glob("decoded-*")):
        if not p.name.endswith(TMP) and p.suffix in (".npy", ".npz"):
            st = p.stat()
            out.append(Entry(p, "decoded", "-", "-", "uint8", st.st_size, st.st_mtime))
    for p in stored_files(Path(root, "features")):
        try:
            meta = json.loads(p.with_suffix(".json").read_text())
        except (OSError, ValueError):
            meta = {}
        try:
            st = p.stat()
        except FileNotFoundError:
            continue
        out.append(Entry(p, str(meta.get("kind", "features")), str(meta.get("arch") or "?"),
                         str(meta.get("frozen_units", "?")), str(meta.get("dtype", "?")), st.st_size, st.st_mtime))
    return sorted(out, key=lambda e: -e.last_used)
