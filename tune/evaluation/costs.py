"""What each finalized model costs to serve, beside its test metrics: ms per image at batch 1 and at the serving
batch size, its parameter count and its ONNX size (comparison.json's `costs`, comparison.md and the report).

Measured once per model in the finalize process after every retraining has ended, so no training competes for the
cores, on the chosen seed's weights (the exported model; a latency depends on the layers and the input size, not
on the weights' values), with the run's latency settings (the space's `latency:`, as its trials measured). So a
`finalize --pick` shows what it bought: the shipped model's speed beside its test AUC and the most accurate one's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any

from tune.inference import load
from tune.metrics.costs import COSTS, LatencySettings
from tune.models.onnxrt import legacy_onnx
from tune.runs.comparison import Costs
from tune.runs.files import Comparison
from tune.runs.info import RunInfo
from tune.training.latency import measure
from tune.training.records import WEIGHTS

Log = Callable[[str], None]
SHOWN = ("latency_ms", "latency_batch_ms", "params", "onnx_mb")  # the comparison's cost columns, by COSTS name


def settings(info: RunInfo) -> LatencySettings:
    """The run's latency settings (its trials' `latency:`), with the ONNX export on and int8 off: every model gets
    its ONNX size, and none the int8 quantization (export --quantize int8 measures that)."""
    recorded = info.space.get("latency") or {}
    known = {f.name for f in fields(LatencySettings)}
    return replace(LatencySettings(**{k: v for k, v in recorded.items() if k in known}), onnx=True, int8=False)


def onnx_mb(model: Any, image_size: int, log: Log) -> float | None:
    """The model's fp32 ONNX export size in MB, or None (and a line saying why) when it does not export."""
    try:
        return len(legacy_onnx(model.to("cpu"), image_size)) / 1e6
    except Exception as e:  # noqa: BLE001 - the exporter's errors are many kinds; the size is then unknown
        log(f"  ONNX size unknown: the model does not export ({type(e).__name__}: "
            f"{str(e).strip().splitlines()[-1][:160] if str(e).strip() else ''})")
        return None


def add_costs(info: RunInfo, cmp: Comparison, log: Log = print) -> None:
    """cmp.costs: each model's costs (by row name, for SHOWN) and how they were measured. Kept apart from the rows,
    whose numbers are reproducible: a latency is a measurement of this machine now."""
    serving = settings(info)
    models, device = {}, "cpu"
    for row in cmp.rows:
        loaded = load(info.run.finalize(row.name, row.chosen_seed) / WEIGHTS)
        device = next(loaded.model.parameters()).device.type
        measured = measure(loaded.model, loaded.image_size, replace(serving, onnx=False))
        costs = {k: measured[k] for k in SHOWN if k in measured}
        costs["onnx_mb"] = onnx_mb(loaded.model, loaded.image_size, log)
        models[row.name] = costs
        log(f"[{row.name}] costs: {costs['latency_ms']:.2f} ms/image at batch 1, {costs['latency_batch_ms']:.2f} "
            f"at batch {serving.batch}, {costs['params']:,} parameters"
            + (f", ONNX {costs['onnx_mb']:.2f} MB" if costs["onnx_mb"] is not None else ""))
    cmp.costs = Costs(serving, device, {k: COSTS[k].label for k in SHOWN}, models)
