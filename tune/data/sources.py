"""Test sources for `evaluate`: one folder of fakes and reals per generator (or per dataset).

A source is a folder with class sub-folders: `Fake/` and `Real/` in any letter case, or
CNNDetection's `1_fake/` and `0_real/`. Each DATA argument is either one source, or a parent
whose sub-folders each are one (one generator per sub-folder). A generator folder may also hold
category folders that each have the class folders (CNNDetection's `progan/airplane/0_real`):
their images form that generator's one source, as the paper reports them.

A source with only one class is accepted (its AUC, AP and EER are undefined, which the table
says); a source with no images at all is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tune import FAKE, REAL
from tune.core import UserError
from tune.data.images import IMAGE_EXTS, SplitFiles, _walk_files, fingerprint
from tune.data.video import is_video

if TYPE_CHECKING:
    import numpy as np

CLASS_DIRS = {"fake": FAKE, "1_fake": FAKE, "real": REAL, "0_real": REAL}
EXPECTED = "Fake/ and Real/ (any letter case) or 1_fake/ and 0_real/, or sub-folders that each hold them"


@dataclass
class Source:
    name: str
    path: Path
    files: list[Path] = field(repr=False)
    labels: list[int] = field(repr=False)

    @property
    def n_fake(self) -> int:
        return self.labels.count(FAKE)

    @property
    def n_real(self) -> int:
        return self.labels.count(REAL)

    def fingerprint(self) -> str:
        """Content hash of the source (relative paths, labels, bytes), as for a dataset split."""
        return fingerprint(SplitFiles(self.name, self.files, self.labels, 0, self.path))


def _subdirs(folder: Path) -> list[Path]:
    try:
        return sorted(c for c in folder.iterdir() if c.is_dir() and not c.name.startswith("."))
    except PermissionError:
        raise UserError(f"cannot list folder {folder}: permission denied") from None


def class_dirs(folder: Path) -> list[tuple[Path, int]]:
    """The class folders directly inside `folder`, with their labels."""
    return [(d, CLASS_DIRS[d.name.lower()]) for d in _subdirs(folder) if d.name.lower() in CLASS_DIRS]


def _parts(folder: Path) -> list[Path] | None:
    """The folders whose class folders make up this source: itself, or its category folders; None if neither."""
    if class_dirs(folder):
        return [folder]
    cats = _subdirs(folder)
    return cats if cats and all(class_dirs(c) for c in cats) else None


def _images(name: str, folder: Path, parts: list[Path]) -> Source:
    files: list[Path] = []
    labels: list[int] = []
    for part in parts:
        for d, label in class_dirs(part):
            found = [f for f in _walk_files(d) if f.suffix.lower() in IMAGE_EXTS or is_video(f)]
            files += found
            labels += [label] * len(found)
    if not files:
        raise UserError(f"empty source folder: {folder} has no images in its class folders (expected "
                        f"{', '.join(sorted(IMAGE_EXTS))} files in {EXPECTED})")
    return Source(name, folder, files, labels)


def find_sources(data: list[Path]) -> list[Source]:
    """Every source under the DATA arguments, in order; names are folder names, made unique."""
    found: list[tuple[str, Path, list[Path]]] = []
    for root in map(Path, data):
        if not root.exists():
            raise UserError(f"data folder not found: {root} (expected a folder with {EXPECTED})")
        if not root.is_dir():
            raise UserError(f"data path is a file, not a folder: {root} (expected a folder with {EXPECTED})")
        if class_dirs(root):
            found.append((root.absolute().name, root, [root]))
            continue
        children = _subdirs(root)
        if not children:
            raise UserError(f"empty data folder: {root} has no class folders and no sub-folders (expected {EXPECTED})")
        for child in children:
            parts = _parts(child)
            if parts is None:
                raise UserError(f"{child} is not a source: {root} looks like a parent of sources, so each of its "
                                f"sub-folders must hold {EXPECTED}")
            found.append((child.name, child, parts))
    names = _unique([(name, path) for name, path, _ in found])
    return [_images(name, path, parts) for name, (_, path, parts) in zip(names, found)]


def _unique(named: list[tuple[str, Path]]) -> list[str]:
    """Folder names; a repeated one gets its parent's name in front (then a number, if still repeated)."""
    names = [n for n, _ in named]
    names = [f"{p.absolute().parent.name}/{n}" if names.count(n) > 1 else n for n, p in named]
    out: list[str] = []
    for n in names:
        out.append(n if n not in out else f"{n}#{sum(o.split('#')[0] == n for o in out) + 1}")
    return out


@dataclass
class Scored:
    """One source's scores: labels and paths of the readable images, P(fake) per (model, condition)."""

    y: np.ndarray
    paths: list[str]
    p: dict[tuple[str, str], np.ndarray]
    bad: list[tuple[str, str]] = field(default_factory=list)  # (path, why) of unreadable images
    frames: Scored | None = None  # a source with videos: its videos' frames, one row each (the frame level)
