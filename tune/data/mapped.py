"""Decoded images on disk: a .npy file written in a stream, and the handle that opens it by path.

A decoded split can be far larger than memory (the notebook's 190k images at 224 px are 28.6 GB), so it is
never held whole: decoding writes rows to the file block by block, and every reader maps it read-only.
The handle (MappedImages) pickles as its path, shape and dtype, so a Ray trial or a spawned finalize job
maps the node's one copy (pages shared through the page cache) instead of receiving a private copy: Ray
pickles a np.memmap inline, and a spawned process gets its arguments pickled.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from tune.core import UserError, current_umask


class DataError(UserError):
    pass


class MappedImages:
    """Stands in for a read-only uint8 array (N, 3, S, S) stored in the .npy file at `path`: indexing, len,
    .shape and np.asarray work as on the array; the file is opened (mapped) on first use in each process."""

    def __init__(self, path: str | Path, shape: tuple[int, ...], dtype: str = "uint8") -> None:
        self.path, self.shape, self.dtype = str(path), tuple(int(n) for n in shape), np.dtype(dtype)
        self._array: np.memmap | None = None

    @classmethod
    def open(cls, path: str | Path) -> MappedImages:
        a = np.load(path, mmap_mode="r")
        out = cls(path, a.shape, a.dtype.str)
        out._array = a
        return out

    def exists(self) -> bool:
        return Path(self.path).is_file()

    @property
    def array(self) -> np.memmap:
        if self._array is None:
            if not self.exists():
                raise DataError(f"decoded images not found at {self.path} on this machine (a decoded cache that was "
                                "deleted, or a node without it): run the command again to decode them here")
            a = np.load(self.path, mmap_mode="r")
            if a.shape != self.shape or a.dtype != self.dtype:  # replaced under us: never read other images
                raise DataError(f"decoded images at {self.path} are {a.shape} {a.dtype}, expected {self.shape} "
                                f"{self.dtype}: the cache changed; run the command again")
            self._array = a
        return self._array

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx: Any) -> np.ndarray:
        return self.array[idx]

    def __iter__(self) -> Any:
        return iter(self.array)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        a = np.asarray(self.array, dtype=dtype)
        return a.copy() if copy else a

    def __reduce__(self) -> tuple[Any, ...]:
        # the path, never the pixels: whoever unpickles maps the file on their own machine
        return (MappedImages, (self.path, self.shape, self.dtype.str))

    def __repr__(self) -> str:
        return f"MappedImages({self.path!r}, {self.shape})"


def write_rows(path: Path, n: int, row_shape: tuple[int, ...], blocks: Iterable[np.ndarray],
               dtype: str = "uint8") -> int:
    """Write up to `n` rows, given block by block, as the .npy file `path`; returns the rows written.

    Memory stays at one block. The file is written under a temporary name and renamed into place, so a
    crash, an error raised by `blocks` or a full disk leaves no partial file at `path`; the space is reserved
    first, so a full disk fails at once rather than after the decoding. Fewer rows than `n` (skipped images)
    shrink the file in place: numpy's header leaves room for the row count to change length."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    row_bytes = int(np.prod(row_shape)) * np.dtype(dtype).itemsize

    def header(f: Any, rows: int) -> None:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                 "fortran_order": False, "shape": (rows, *row_shape)})

    try:
        with open(tmp, "wb") as f:
            header(f, n)
            start = f.tell()
            try:
                os.posix_fallocate(f.fileno(), 0, start + n * row_bytes)
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    raise DataError(f"not enough disk space for the decoded images ({(start + n * row_bytes) / 1e9:.1f}"
                                    f" GB) in {path.parent}") from None
                # the file system cannot reserve space: write without
            rows = 0
            for b in blocks:
                b = np.ascontiguousarray(b, dtype=dtype)
                if rows + len(b) > n or b.shape[1:] != row_shape:
                    raise ValueError(f"block of {b.shape} does not fit {n} rows of {row_shape}")
                f.write(b.data)
                rows += len(b)
            if rows != n:
                f.seek(0)
                header(f, rows)
                if f.tell() != start:  # never: numpy pads the header for a row count of any length
                    raise RuntimeError("the .npy header changed length")
                f.truncate(start + rows * row_bytes)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return rows


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing): processes on one machine take turns."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield
