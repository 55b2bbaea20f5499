"""What a trial's kept model costs to serve, declared once like the metrics (tune/metrics/classification.py):
name, direction, label. A trial measures them once (tune/training/latency.py) and reports them in every epoch's
row from then on, so the leaderboard shows them, finalize --pick reads them and a multi-objective space may
optimise them (`objectives: [val_auc: max, latency_ms: min]`). Lower is better for every cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Cost:
    name: str
    label: str
    mode: str = "min"
    needs: str = ""  # the LatencySettings switch that makes a trial measure it ("": always measured)


COSTS: dict[str, Cost] = {c.name: c for c in (
    Cost("latency_ms", "median ms per image at batch 1"),
    Cost("latency_batch_ms", "median ms per image at the serving batch size"),
    Cost("params", "parameters (frozen and trained)"),
    Cost("onnx_mb", "exported ONNX size, MB", needs="onnx"),
    Cost("latency_int8_ms", "median ms per image at batch 1, static int8 under ONNX Runtime", needs="int8"),
)}
MEASURE_S = "cost_s"  # the seconds the measurement took (its share of the trial's time is shown by the benchmark)


@dataclass(frozen=True)
class LatencySettings:
    """How a latency is measured (a space's `latency:` mapping)."""

    threads: int = 1  # torch threads while measuring (0: the trial's own); the same for every trial: comparable
    batch: int = 32  # the serving batch size
    warmup: int = 2  # untimed runs first, at each batch size
    repeats: int = 7  # timed runs at batch 1 (the median is reported); the serving batch gets max(2, repeats // 3)
    onnx: bool = False  # also export to ONNX and report its size (costs an export: a second or two per trial)
    int8: bool = False  # also time the static int8 model under ONNX Runtime (an export and a quantization)


def __getattr__(name: str) -> Any:
    """LatencySettings under the name it had in runs searched before it was renamed (Serving): Ray's pickled
    searcher holds the space and its settings by qualified name, and `search --resume` of such a run unpickles it."""
    if name == "Serving":
        return LatencySettings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
