"""What each finalized model costs to serve, beside its test metrics: ms per image at batch 1 and at the serving
batch size, its parameter count and its ONNX size (comparison.json's rows, comparison.md and the report).

Measured once per model in the finalize process after every retraining has ended, so no training competes for the
cores, on the chosen seed's weights (the exported model; a latency depends on the layers and the input size, not
on the weights' values), with the run's latency settings (the space's `latency:`, as its trials measured). So a
`finalize --pick` shows what it bought: the shipped model's speed beside its test AUC and the most accurate one's.
"""

from __future__ import annotations

from dataclasses import asdict, fields, replace
from typing import Any

from tune.inference import load
from tune.metrics.costs import COSTS, Serving
from tune.runs.files import Comparison
from tune.runs.info import RunInfo
from tune.training.latency import measure
from tune.training.records import WEIGHTS

SHOWN = ("latency_ms", "latency_batch_ms", "params", "onnx_mb")  # the comparison's cost columns, by COSTS name


def settings(info: RunInfo) -> Serving:
    """The run's latency settings (its trials' `latency:`), with the ONNX export on and int8 off: every model gets
    its ONNX size, and none the int8 quantization (export --quantize int8 measures that)."""
    recorded = info.space.get("latency") or {}
    known = {f.name for f in fields(Serving)}
    return replace(Serving(**{k: v for k, v in recorded.items() if k in known}), onnx=True, int8=False)


def add_costs(info: RunInfo, cmp: Comparison, log: Any = print) -> None:
    """Each row of `cmp` gains `costs` ({name: value} for SHOWN) and `cmp.costs` says how they were measured."""
    serving = settings(info)
    for row in cmp.rows:
        model = load(info.run.finalize(row["name"], row["chosen_seed"]) / WEIGHTS)
        measured = measure(model.model, model.image_size, serving)
        row["costs"] = {k: measured[k] for k in SHOWN if k in measured}
        log(f"[{row['name']}] costs: {row['costs']['latency_ms']:.2f} ms/image at batch 1, "
            f"{row['costs']['latency_batch_ms']:.2f} at batch {serving.batch}, {row['costs']['params']:,} parameters, "
            f"ONNX {row['costs']['onnx_mb']:.1f} MB")
    cmp.costs = {"settings": asdict(serving), "device": str(next(model.model.parameters()).device.type),
                 "labels": {k: COSTS[k].label for k in SHOWN}}
