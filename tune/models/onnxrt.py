"""ONNX Runtime underneath export and the trials' latency: a model to ONNX bytes, quantized to int8, run and
timed. In the models layer so a trial (tune/training/latency.py) can measure its int8 cost as `export` makes it
(tune/serving/quantize.py states the schemes and checks parity)."""

from __future__ import annotations

import contextlib
import io
import logging
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tune.core import UserError

if TYPE_CHECKING:
    import numpy as np
    from torch import nn


def legacy_onnx(model: nn.Module, image_size: int) -> bytes:
    """`model` (on the CPU, as it is) in ONNX through the TorchScript exporter: fast (a second or two, against
    torch.export's ten), and the graph ONNX Runtime quantizes and runs like export's; the batch axis is dynamic.
    Only measurements use it: `export` ships the torch.export graph, parity-checked."""
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(model, (torch.rand(1, 3, image_size, image_size),), buf, dynamo=False,
                          input_names=["image"], dynamic_axes={"image": {0: "n"}})
    return buf.getvalue()


def _refused(scheme: str, arch: str, e: Exception) -> UserError:
    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
    return UserError(f"--quantize {scheme}: {arch} cannot be quantized by ONNX Runtime ({type(e).__name__}: "
                     f"{first}); export it without --quantize")


def quantize_int8(onnx_bytes: bytes, arch: str, calibration: np.ndarray | None = None) -> bytes:
    """The model quantized to int8, as bytes: static, calibrated on `calibration` (float [0,1] NCHW images),
    or dynamic when `calibration` is None."""
    # heavy: onnxruntime only when a model is quantized
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    scheme = "int8-dynamic" if calibration is None else "int8"
    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d) / "fp32.onnx", Path(d) / "int8.onnx"
        src.write_bytes(onnx_bytes)
        try:
            with _quiet():
                if calibration is None:
                    quantize_dynamic(src, dst, weight_type=QuantType.QUInt8)
                else:
                    quantize_static(_preprocessed(src), dst, _Batches(calibration), quant_format=QuantFormat.QDQ,
                                    per_channel=True, activation_type=QuantType.QUInt8,
                                    weight_type=QuantType.QInt8)
            return dst.read_bytes()
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - ORT raises many types; the user gets one line
            raise _refused(scheme, arch, e) from None


def _preprocessed(src: Path) -> Path:
    """ONNX Runtime's recommended step before static quantization: shape inference and graph optimisation,
    so Conv+BatchNorm+activation are fused before ranges are calibrated."""
    # heavy: onnxruntime only when a model is quantized
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = src.with_name("pre.onnx")
    quant_pre_process(str(src), str(out))
    return out


class _Batches:
    """ONNX Runtime's CalibrationDataReader over images, 8 at a time (the activations' ranges see them all)."""

    def __init__(self, x: np.ndarray, input_name: str = "image") -> None:
        self._batches = iter([{input_name: x[i:i + 8]} for i in range(0, len(x), 8)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:  # part of the reader's interface; one pass is all quantize_static makes
        pass


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ONNX Runtime's quantizer logs advice through the root logger; the CLI prints its own one line."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def session(onnx_bytes: bytes, threads: int = 1) -> Any:
    import onnxruntime as ort  # heavy: onnxruntime only when an ONNX model runs

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(onnx_bytes, sess_options=opts, providers=["CPUExecutionProvider"])


def session_median_ms(sess: Any, x: np.ndarray, name: str, repeats: int = 20, warmup: int = 3) -> float:
    """Median milliseconds per image running one image at a time."""
    times = []
    for k in range(warmup + repeats):
        t0 = time.perf_counter()
        sess.run(None, {name: x[k % len(x)][None]})
        if k >= warmup:
            times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times)
