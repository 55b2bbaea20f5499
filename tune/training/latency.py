"""What the kept model costs to serve, measured where the trial runs: median ms per image at batch 1 and at the
serving batch size, over fixed inputs after warm-up, the parameter count and, when asked, the ONNX size and the
static int8 model's ms per image under ONNX Runtime (what `export --quantize int8` ships).

A trial measures once, when its first kept epoch is chosen (tune.training.loop.fit's `measure` hook): the
model then holds the kept weights, and a later kept epoch has the same layers, so the same cost (a latency
depends on the layers and the input size, not on the weights' values). The numbers join that row and every
later one, so a trial ASHA stops has them too. The measurement's own time is reported as `cost_s`.

The inputs are fixed (a seeded generator), the model is in eval mode under inference_mode, and torch runs
with the serving threads (`latency: {threads: N}` in the space; 0 keeps the trial's), restored after.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import nn

from tune.metrics.costs import MEASURE_S, LatencySettings
from tune.models.onnxrt import legacy_onnx, quantize_int8, session, session_median_ms


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def torch_median_ms(model: nn.Module, x: torch.Tensor, warmup: int, repeats: int) -> float:
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


def int8_ms(model: nn.Module, x: torch.Tensor, serving: LatencySettings, onnx: bytes) -> float:
    """Median ms per image at batch 1 of the model as `export --quantize int8` makes it (ONNX Runtime's static
    QDQ int8), with the serving threads. Calibrated on the fixed inputs: a latency depends on which ops run,
    not on the ranges calibration sets."""
    images = x.float().cpu().contiguous().numpy()  # NCHW as ONNX Runtime reads it (x is channels_last)
    int8 = quantize_int8(onnx, type(model).__name__, images)
    return session_median_ms(session(int8, max(1, serving.threads)), images, "image", serving.repeats, serving.warmup)


def measure(model: nn.Module, image_size: int, serving: LatencySettings = LatencySettings(),
            seed: int = 0) -> dict[str, Any]:
    """{latency_ms, latency_batch_ms, params, [onnx_mb], [latency_int8_ms], cost_s} of `model` as it is now (its
    weights kept)."""
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
            "latency_ms": torch_median_ms(model, x[:1], serving.warmup, serving.repeats),
            "latency_batch_ms": torch_median_ms(model, x, min(1, serving.warmup), max(2, serving.repeats // 3)),
            "params": sum(p.numel() for p in model.parameters()),
        }
        if serving.onnx or serving.int8:
            onnx = legacy_onnx(model.to("cpu"), image_size)
            model.to(device)
            if serving.onnx:
                out["onnx_mb"] = len(onnx) / 1e6
            if serving.int8:
                out["latency_int8_ms"] = int8_ms(model, x, serving, onnx)
    finally:
        torch.set_num_threads(threads)
        model.train(was_training)
    out[MEASURE_S] = time.perf_counter() - t0
    return out
