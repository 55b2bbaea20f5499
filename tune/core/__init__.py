"""Small shared helpers: the one seeding helper, atomic writes, versions, user errors, typed files."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata as md
import io
import json
import os
import platform
import random
import tempfile
from pathlib import Path
from typing import Any, TypeVar

import numpy as np


class UserError(Exception):
    """A problem with the user's input. The CLI prints it as one line and exits 2."""


def seed_everything(seed: int) -> None:
    """The one seeding helper: Python, NumPy and torch, plus deterministic kernels."""
    import torch  # heavy: torch only when seeding; tune.core, the bottom layer, imports nothing heavy

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS on GPUs
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def cache_root() -> Path:
    """The user's cache folder (decoded images, frozen-backbone features, the built-in dataset)."""
    return Path(os.environ.get("TUNE_CACHE_DIR") or Path.home() / ".cache" / "deepfake-tune").absolute()


def current_umask() -> int:
    """The process's umask, read without changing it where Linux tells it (set-and-restore races threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`.

    A crash or a full disk leaves either the old file or the new one, never half of one. The file
    gets the mode any new file of the user gets (0666 less the umask), not mkstemp's private 0600,
    so results on shared storage are readable by the user's group as usual.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_torch_save(path: Path, obj: Any) -> None:
    import torch  # heavy: torch only when saving; tune.core, the bottom layer, imports nothing heavy

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    """Versions recorded with every result, so a number can be traced to its stack."""
    out = {"python": platform.python_version()}
    for pkg in ("torch", "torchvision", "ray", "optuna", "numpy", "pandas", "scikit-learn", "pillow"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def read_json(path: Path) -> dict[str, Any]:
    """A JSON document the project wrote (run.json, a record); unreadable → one-line UserError."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    if not isinstance(doc, dict):
        raise UserError(f"cannot read {path}: expected a JSON object")
    return doc


# --------------------------------------------------------------------------- typed files
T = TypeVar("T")


def known(cls: type[T], d: dict[str, Any]) -> T:
    """cls from a file's dict, keeping the fields cls has: a later version's extra fields are left alone, missing
    ones take their defaults (what they meant when an earlier version wrote the file)."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in d.items() if k in names})


def plain(obj: Any) -> dict[str, Any]:
    """A dataclass as the dict its file holds (nested dataclasses too; fields that are None left out)."""
    return {k: v for k, v in dataclasses.asdict(obj).items() if v is not None}
