"""`export --quantize int8`: the fp32 ONNX model quantized by ONNX Runtime, checked against fp32 and timed.

Two schemes:
- `int8` (static): int8 weights per channel and uint8 activations whose ranges are calibrated on the model's own
  validation images (QDQ format, so ONNX Runtime runs QLinearConv kernels). The validation split must be where
  the record says (or it is one line: there is nothing honest to calibrate on). The calibration images are
  not the parity images, and never the test split.
- `int8-dynamic`: int8 weights only; activations quantized per batch at run time (no calibration). On this
  project's convolutional models ONNX Runtime runs it 1.7-5x *slower* than fp32 (ConvInteger), measured in
  docs/speed.md; it is kept for graphs the static scheme cannot handle.

Quantization changes the numbers, so the parity limit is looser than fp32's 1e-4: max |Δ P(fake)| <= 0.05 on the
same fixed image set (validation images when the record's data is here, else synthetic ones), which is what
moves a decision at a threshold by at most that much; the mean difference is reported too. The speed-up is
measured on the same images at batch 1 (median of repeated runs after warm-up, one thread: how a small server
runs it). An architecture ONNX Runtime cannot quantize, or whose quantized model drifts past the limit, is
one line and nothing is written.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tune.core import UserError
from tune.models.onnxrt import session, session_median_ms

INT8_LIMIT = 0.05
SCHEMES = ("int8", "int8-dynamic")
CALIBRATION_IMAGES = 64  # validation images that set the activations' ranges (`int8`)


def compare(fp32: bytes, int8: bytes, x: np.ndarray, arch: str, input_name: str, scheme: str = "int8",
            calibrated_on: int = 0) -> dict[str, Any]:
    """Parity of int8 against fp32 on x (uint8 images) and their latencies at batch 1; UserError past the limit."""
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
    ms_fp32, ms_int8 = session_median_ms(a, xf, input_name), session_median_ms(b, xf, input_name)
    about = (f"int8 static (ONNX Runtime quantize_static, QDQ, per-channel int8 weights, uint8 activations "
             f"calibrated on {calibrated_on} validation images)" if scheme == "int8" else
             "int8 dynamic (ONNX Runtime quantize_dynamic, uint8 weights)")
    return {"scheme": about, "name": scheme, "max_abs_diff": worst,
            "mean_abs_diff": float(diff.mean()), "limit": INT8_LIMIT, "n": len(x),
            "ms_per_image_fp32": ms_fp32, "ms_per_image_int8": ms_int8, "speedup": ms_fp32 / ms_int8,
            "bytes_fp32": len(fp32), "bytes_int8": len(int8)}
