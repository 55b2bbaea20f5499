"""`export --quantize int8`: the fp32 ONNX model, quantized by ONNX Runtime's dynamic quantization (int8
weights; activations quantized per batch at run time), checked against fp32 and timed.

Quantization changes the numbers, so the parity limit is looser than fp32's 1e-4: max |Δ P(fake)| <= 0.05 on the
same fixed image set (validation images when the record's data is here, else synthetic ones), which is what
moves a decision at a threshold by at most that much; the mean difference is reported too. The speed-up is
measured on the same images at batch 1 (median of repeated runs after warm-up, one thread: how a small server
runs it). An architecture ONNX Runtime cannot quantize, or whose quantized model drifts past the limit, is
one line and nothing is written.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tune.core import UserError

if TYPE_CHECKING:
    import numpy as np

INT8_LIMIT = 0.05
SCHEMES = ("int8",)


def quantize_int8(onnx_bytes: bytes, arch: str) -> bytes:
    """The model with int8 weights (ONNX Runtime's quantize_dynamic: MatMul/Gemm and Conv), as bytes."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d) / "fp32.onnx", Path(d) / "int8.onnx"
        src.write_bytes(onnx_bytes)
        try:
            quantize_dynamic(src, dst, weight_type=QuantType.QUInt8)
            return dst.read_bytes()
        except Exception as e:  # noqa: BLE001 - ORT raises many types; the user gets one line
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            raise UserError(f"--quantize int8: {arch} cannot be quantized by ONNX Runtime ({type(e).__name__}: "
                            f"{first}); export it without --quantize") from None


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


def compare(fp32: bytes, int8: bytes, x: np.ndarray, arch: str, input_name: str) -> dict[str, Any]:
    """Parity of int8 against fp32 on x (uint8 images) and their latencies at batch 1; UserError past the limit."""
    import numpy as np

    xf = x.astype(np.float32) / np.float32(255.0)
    a, b = session(fp32), session(int8)
    try:
        pa, pb = (np.asarray(s.run(None, {input_name: xf})[0], dtype=np.float64) for s in (a, b))
    except Exception as e:  # noqa: BLE001 - e.g. an int8 kernel ONNX Runtime lacks for this graph
        raise UserError(f"--quantize int8: the quantized {arch} does not run under ONNX Runtime "
                        f"({type(e).__name__}: {str(e).strip()[:200]}); export it without --quantize") from None
    diff = np.abs(pa - pb)
    worst = float(diff.max())
    if not worst <= INT8_LIMIT:
        raise UserError(f"--quantize int8: {arch} drifts too far when quantized: max |Δ P(fake)| = {worst:.3g} on "
                        f"{len(x)} images (limit {INT8_LIMIT:g}); nothing written")
    ms_fp32, ms_int8 = median_ms(a, xf, input_name), median_ms(b, xf, input_name)
    return {"scheme": "int8 dynamic (ONNX Runtime quantize_dynamic, uint8 weights)", "max_abs_diff": worst,
            "mean_abs_diff": float(diff.mean()), "limit": INT8_LIMIT, "n": len(x),
            "ms_per_image_fp32": ms_fp32, "ms_per_image_int8": ms_int8, "speedup": ms_fp32 / ms_int8,
            "bytes_fp32": len(fp32), "bytes_int8": len(int8)}
