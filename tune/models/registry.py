"""The architecture registry: look an architecture up, check its hyperparameters, build it.

Every architecture is one `@register_arch` entry (tune/models/register.py, timm style) in its family's
module, imported below so that each is registered, in this order (the order `archs` lists them):
custom_cnn.py, mobilenet.py, efficientnet_lite.py. `timm/NAME` is any timm backbone, made into an entry on
first use (tune/models/timm_adapter.py). Every other module looks architectures up here: adding a backbone
is one entry in a family module (plus its test).
"""

from __future__ import annotations

from typing import Any

from tune.core import UserError
from tune.models import weights as W
from tune.models.detector import Arch, Detector, parse_head_sizes
from tune.models.hparams import HParamKind
from tune.models.register import DEFAULT_ARCH, REGISTRY, TIMM_PREFIX, head_params, register_arch
from tune.models.timm_adapter import timm_arch

# Each family registers its entries as it is imported, so this order is the order `archs` lists them.
# isort: off
from tune.models import custom_cnn, mobilenet, efficientnet_lite  # noqa: E402, F401
# isort: on

__all__ = ["DEFAULT_ARCH", "REGISTRY", "TIMM_PREFIX", "build_model", "check_hparams", "get_arch", "head_params",
           "list_archs", "register_arch"]


def get_arch(name: str) -> Arch:
    if name in REGISTRY:
        return REGISTRY[name]
    if isinstance(name, str) and name.startswith(TIMM_PREFIX):
        return timm_arch(name)
    raise UserError(f"unknown architecture {name!r}; valid: {', '.join(list_archs())}, or timm/NAME for any "
                    "timm backbone")


def list_archs() -> list[str]:
    """The registered names (timm/NAME backbones are made on use and not listed)."""
    return list(REGISTRY)


def check_hparams(name: str, hp: dict[str, Any]) -> dict[str, Any]:
    """The architecture's full hyperparameters: defaults filled, types and ranges checked, unknown refused."""
    arch = get_arch(name)
    unknown = sorted(set(hp) - set(arch.hparams))
    if unknown:
        raise UserError(f"{name} has no hyperparameter {unknown[0]!r}; its hyperparameters: "
                        f"{', '.join(arch.hparams)}")
    out: dict[str, Any] = {}
    for key, spec in arch.hparams.items():
        v = hp.get(key, spec.default)
        if spec.kind == HParamKind.WIDTHS:
            v = parse_head_sizes(v)
            if not all(w >= 1 for w in v):
                raise UserError(f"{name}: head_sizes must be positive widths, got {v}")
        elif spec.kind == HParamKind.WEIGHTS:
            W.check_kind(str(v), arch.weights, name)
            v = str(v)
        else:
            integer = spec.kind == HParamKind.INT
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (not integer or v == int(v))
            if not ok:
                raise UserError(f"{name}: {key} must be {'an integer' if integer else 'a number'}, got {v!r}")
            v = int(v) if integer else float(v)
            if (spec.low is not None and v < spec.low) or (spec.high is not None and v > spec.high):
                raise UserError(f"{name}: {key}={v} out of range (expected {spec.low}..{spec.high})")
        out[key] = v
    return out


def build_model(name: str, **hparams: Any) -> Detector:
    return get_arch(name).builder(**check_hparams(name, hparams))
