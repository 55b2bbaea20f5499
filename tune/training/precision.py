"""Mixed precision: which one a run uses (config's `precision`), and the autocast and scaler it needs.

auto is bf16 autocast on a GPU that has bf16, else fp16 with a GradScaler (fp16's narrow range underflows
small gradients without one), and fp32 on the CPU: CPU autocast changes every number (the exact
reproduction checks hold only in fp32) for a speed-up that depends on the CPU, so it runs only when asked
(`precision: bf16`; docs/speed.md, "Input pipeline and mixed precision", measures it).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # the autocast ones; fp32 runs without autocast


def resolve(requested: str, device: str, bf16_supported: Callable[[], bool] | None = None) -> str:
    """The precision that runs: `requested` unless it is auto. `bf16_supported` stands in for the GPU's
    capability (tests), default torch.cuda.is_bf16_supported."""
    if requested != "auto":
        return requested
    if device != "cuda":
        return "fp32"
    return "bf16" if (bf16_supported or torch.cuda.is_bf16_supported)() else "fp16"


def autocast(precision: str, device: str) -> AbstractContextManager[object]:
    """The forward passes' context: nothing at all in fp32, so fp32 runs the plain forward pass."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device, dtype=DTYPES[precision])


def grad_scaler(precision: str, device: str) -> torch.amp.GradScaler | None:
    """fp16 only: bf16 has fp32's exponent range, so its gradients need no scaling."""
    return torch.amp.GradScaler(device) if precision == "fp16" else None
