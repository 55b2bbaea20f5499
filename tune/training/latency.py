"""What the kept model costs to serve, measured where the trial runs: median ms per image at batch 1 and at the
serving batch size, over fixed inputs after warm-up, the parameter count and (when asked) the ONNX size.

A trial measures once, when its first kept epoch is chosen (tune.training.loop.fit's `measure` hook): the
model then holds the kept weights, and a later kept epoch has the same layers, so the same cost (a latency
depends on the layers and the input size, not on the weights' values). The numbers join that row and every
later one, so a trial ASHA stops has them too. The measurement's own time is reported as `cost_s`.

The inputs are fixed (a seeded generator), the model is in eval mode under inference_mode, and torch runs
with the serving threads (`latency: {threads: N}` in the space; 0 keeps the trial's), restored after.
"""

from __future__ import annotations

import io
import statistics
import time
from typing import Any

import torch
from torch import nn

from tune.metrics.costs import MEASURE_S, Serving


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def median_ms(model: nn.Module, x: torch.Tensor, warmup: int, repeats: int) -> float:
    """Median wall milliseconds per image of model(x) over `repeats` timed runs after `warmup` untimed ones."""
    cuda = x.device.type == "cuda"
    times = []
    with torch.inference_mode():
        for k in range(warmup + repeats):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(x)
            if cuda:
                torch.cuda.synchronize()
            if k >= warmup:
                times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times) / len(x)


def onnx_megabytes(model: nn.Module, image_size: int) -> float:
    """The size of the model exported to ONNX (the legacy TorchScript exporter: fast, and the size is the weights')."""
    buf = io.BytesIO()
    cpu = model.to("cpu")
    with torch.no_grad():
        torch.onnx.export(cpu, (torch.rand(1, 3, image_size, image_size),), buf, dynamo=False)
    return buf.getbuffer().nbytes / 1e6


def measure(model: nn.Module, image_size: int, serving: Serving = Serving(), seed: int = 0) -> dict[str, Any]:
    """{latency_ms, latency_batch_ms, params, [onnx_mb], cost_s} of `model` as it is now (its weights kept)."""
    t0 = time.perf_counter()
    was_training, threads = model.training, torch.get_num_threads()
    device = _device(model)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(max(1, serving.batch), 3, image_size, image_size, generator=gen)
    x = x.to(device).contiguous(memory_format=torch.channels_last)
    model.eval()
    if serving.threads > 0:
        torch.set_num_threads(serving.threads)
    try:
        out: dict[str, Any] = {
            "latency_ms": median_ms(model, x[:1], serving.warmup, serving.repeats),
            "latency_batch_ms": median_ms(model, x, min(1, serving.warmup), max(2, serving.repeats // 3)),
            "params": sum(p.numel() for p in model.parameters()),
        }
        if serving.onnx:
            out["onnx_mb"] = onnx_megabytes(model, image_size)
            model.to(device)
    finally:
        torch.set_num_threads(threads)
        model.train(was_training)
    out[MEASURE_S] = time.perf_counter() - t0
    return out
