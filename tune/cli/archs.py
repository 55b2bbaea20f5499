"""`python -m tune archs`."""

from __future__ import annotations

import argparse

from tune.models.registry import build_model, get_arch, list_archs
from tune.models.weights import WeightsUnavailable


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("archs", help="list the registered architectures, their hyperparameters and weights")
    p.add_argument("names", nargs="*", help="only these (also timm/NAME for any timm backbone)")
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    """Every registered architecture: what it is, its hyperparameters, and whether its weights are here."""
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
