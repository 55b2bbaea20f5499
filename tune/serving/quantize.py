"""`export --quantize int8`: the fp32 ONNX model quantized by ONNX Runtime, checked against fp32 and timed.

Two schemes:
- `int8` (static): int8 weights per channel and uint8 activations whose ranges are calibrated on the model's own
  validation images (QDQ format, so ONNX Runtime runs QLinearConv kernels). The validation split must be where
  the record says (or it is one line: there is nothing honest to calibrate on). The calibration images are
  not the parity images, and never the test split.
- `int8-dynamic`: int8 weights only; activations quantized per batch at run time (no calibration). On this
  project's convolutional models ONNX Runtime runs it 3-7x *slower* than fp32 (ConvInteger), measured in
  docs/speed.md; it is kept for graphs the static scheme cannot handle.

Quantization changes the numbers, so the parity limit is looser than fp32's 1e-4: max |Δ P(fake)| <= 0.05 on the
same fixed image set (validation images when the record's data is here, else synthetic ones), which is what
moves a decision at a threshold by at most that much; the mean difference is reported too. The speed-up is
measured on the same images at batch 1 (median of repeated runs after warm-up, one thread: how a small server
runs it). An architecture ONNX Runtime cannot quantize, or whose quantized model drifts past the limit, is
one line and nothing is written.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tune.core import UserError

if TYPE_CHECKING:
    import numpy as np

INT8_LIMIT = 0.05
SCHEMES = ("int8", "int8-dynamic")
CALIBRATION_IMAGES = 64  # validation images that set the activations' ranges (`int8`)


def _refused(scheme: str, arch: str, e: Exception) -> UserError:
    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
    return UserError(f"--quantize {scheme}: {arch} cannot be quantized by ONNX Runtime ({type(e).__name__}: "
                     f"{first}); export it without --quantize")


def quantize_int8(onnx_bytes: bytes, arch: str, calibration: np.ndarray | None = None) -> bytes:
    """The model quantized to int8, as bytes: static, calibrated on `calibration` (float [0,1] NCHW images),
    or dynamic when `calibration` is None."""
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
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(onnx_bytes, sess_options=opts, providers=["CPUExecutionProvider"])


def median_ms(sess: Any, x: np.ndarray, name: str, repeats: int = 20, warmup: int = 3) -> float:
    """Median milliseconds per image running one image at a time."""
    times = []
    for k in range(warmup + repeats):
        t0 = time.perf_counter()
        sess.run(None, {name: x[k % len(x)][None]})
        if k >= warmup:
            times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times)


def compare(fp32: bytes, int8: bytes, x: np.ndarray, arch: str, input_name: str, scheme: str = "int8",
            calibrated_on: int = 0) -> dict[str, Any]:
    """Parity of int8 against fp32 on x (uint8 images) and their latencies at batch 1; UserError past the limit."""
    import numpy as np

    xf = x.astype(np.float32) / np.float32(255.0)
    a, b = session(fp32), session(int8)
    try:
        pa, pb = (np.asarray(s.run(None, {input_name: xf})[0], dtype=np.float64) for s in (a, b))
    except Exception as e:  # noqa: BLE001 - e.g. an int8 kernel ONNX Runtime lacks for this graph
        raise UserError(f"--quantize {scheme}: the quantized {arch} does not run under ONNX Runtime "
                        f"({type(e).__name__}: {str(e).strip()[:200]}); export it without --quantize") from None
    diff = np.abs(pa - pb)
    worst = float(diff.max())
    if not worst <= INT8_LIMIT:
        raise UserError(f"--quantize {scheme}: {arch} drifts too far when quantized: max |Δ P(fake)| = {worst:.3g} on "
                        f"{len(x)} images (limit {INT8_LIMIT:g}); nothing written")
    ms_fp32, ms_int8 = median_ms(a, xf, input_name), median_ms(b, xf, input_name)
    about = (f"int8 static (ONNX Runtime quantize_static, QDQ, per-channel int8 weights, uint8 activations "
             f"calibrated on {calibrated_on} validation images)" if scheme == "int8" else
             "int8 dynamic (ONNX Runtime quantize_dynamic, uint8 weights)")
    return {"scheme": about, "name": scheme, "max_abs_diff": worst,
            "mean_abs_diff": float(diff.mean()), "limit": INT8_LIMIT, "n": len(x),
            "ms_per_image_fp32": ms_fp32, "ms_per_image_int8": ms_int8, "speedup": ms_fp32 / ms_int8,
            "bytes_fp32": len(fp32), "bytes_int8": len(int8)}
