"""`python -m tune export --model PATH --format onnx [--out FILE]`

Exports a trained detector to ONNX with torch.onnx (the torch.export-based exporter), then
checks it: onnxruntime must give the same P(fake) as PyTorch on 32 images (max |Δ| <= 1e-4)
at batch 32 and at batch 1 (the batch axis is dynamic). The file is written only after the
check passes, atomically, so a failed export leaves nothing behind. MODEL_CARD.md is written
beside it (tune/serving/modelcard.py).

The ONNX model takes float32 RGB in [0, 1], (N, 3, S, S) at the record's image size, with any
normalisation inside, and outputs P(fake) (the sigmoid of the logit), shape (N,).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tune import inference
from tune.core import UserError, atomic_write_bytes, atomic_write_text
from tune.data.images import scan_split
from tune.models.onnxrt import quantize_int8
from tune.serving.modelcard import model_card, render_card
from tune.serving.quantize import CALIBRATION_IMAGES, SCHEMES, compare

if TYPE_CHECKING:

    from tune.inference import LoadedModel

PARITY_IMAGES = 32
PARITY_LIMIT = 1e-4
FORMATS = ("onnx",)
INPUT, OUTPUT = "image", "p_fake"


def validation_images(loaded: LoadedModel, n: int, *, half_step: bool = False) -> np.ndarray | None:
    """n uint8 images spread over the record's validation split (never the test split), or None when the split
    is not where the record says. `half_step`: the images half-way between those of the default spread, so a
    second set (int8 calibration) shares none with the first (parity)."""
    root = loaded.record.data.get("root")
    if not (root and Path(root).is_dir()):
        return None
    try:
        files = scan_split(Path(root), "valid").paths
    except UserError:
        return None
    step = max(1, len(files) // n)
    picked = []
    for f in files[step // 2 if half_step else 0::step]:
        try:
            picked.append(loaded.decode(f))
        except (ValueError, OSError):
            continue
        if len(picked) == n:
            break
    return np.stack(picked) if picked else None


def parity_images(loaded: LoadedModel, n: int = PARITY_IMAGES) -> tuple[np.ndarray, str]:
    """n uint8 images: the record's validation images when its data root is here (never the test split),
    else deterministic synthetic ones (noise, gradients and checkerboards, so every layer sees signal)."""
    valid = validation_images(loaded, n)
    if valid is not None and len(valid) == n:
        return valid, "validation"
    s = loaded.image_size
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:s, 0:s]
    x = np.empty((n, 3, s, s), dtype=np.uint8)
    for i in range(n):
        base = rng.uniform(0, 255, (3, 1, 1)) * (xx + yy) / (2 * s) + rng.normal(0, 20 + 2 * i, (3, s, s))
        x[i] = np.clip(base + ((xx + yy) % 2) * (i % 3) * 12, 0, 255).astype(np.uint8)
    return x, "synthetic"


def to_onnx(loaded: LoadedModel) -> tuple[bytes, int]:
    """(serialized ONNX model, opset) taking float [0,1] NCHW and returning P(fake)."""
    class WithSigmoid(torch.nn.Module):
        def __init__(self, detector: torch.nn.Module) -> None:
            super().__init__()
            self.detector = detector

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.detector(image))

    net = WithSigmoid(loaded.model).eval().cpu()
    s = loaded.image_size
    example = torch.rand(2, 3, s, s)  # batch 2, not 1: a batch of 1 would be specialised into the graph
    # Under no_grad the frozen prefix's own no_grad is not a grad-mode switch, so torch.export does not
    # wrap it in a higher-order op: the same graph, exported 2-3x faster. The exporter prints progress;
    # the CLI prints one line of its own.
    try:
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            program = torch.onnx.export(net, (example,), dynamo=True, input_names=[INPUT], output_names=[OUTPUT],
                                        dynamic_shapes={INPUT: {0: torch.export.Dim("batch")}}, verbose=False)
    except Exception as e:  # noqa: BLE001 - torch.export raises many types; the user gets one line
        raise UserError(f"torch.onnx.export failed for {loaded.arch}: {type(e).__name__}: "
                        f"{str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}") from None
    proto = program.model_proto
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    return proto.SerializeToString(), int(opset)


def check_parity(loaded: LoadedModel, onnx_bytes: bytes, x: np.ndarray) -> float:
    """max |P_torch - P_onnx| over x, run through onnxruntime at full batch and one image at a time."""
    import onnxruntime as ort  # heavy: onnxruntime only when an export is checked

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    ref = loaded.probabilities(x, batch=len(x))
    xf = x.astype(np.float32) / np.float32(255.0)  # exactly tune.data.images.to_float
    full = session.run([OUTPUT], {INPUT: xf})[0].astype(np.float64)
    single = np.concatenate([session.run([OUTPUT], {INPUT: xf[i:i + 1]})[0] for i in range(min(4, len(x)))])
    if full.shape != ref.shape:
        raise UserError(f"the ONNX model returns shape {full.shape}, expected {ref.shape}")
    return float(max(np.abs(full - ref).max(), np.abs(single - ref[:len(single)]).max()))


def export(model: Path, fmt: str = "onnx", out: Path | None = None, quantize: str | None = None) -> dict[str, Any]:
    """The fp32 ONNX model, parity-checked; with `quantize` ("int8": static, calibrated on validation images;
    "int8-dynamic") its quantized version is written instead, checked against fp32 within
    tune/serving/quantize.py's stated limit and timed."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    loaded = inference.load(model)
    name = f"model-{quantize}.onnx" if quantize else "model.onnx"
    out = Path(out) if out else loaded.path.parent / f"{loaded.path.stem}-onnx" / name
    x, kind = parity_images(loaded)
    data, opset = to_onnx(loaded)
    diff = check_parity(loaded, data, x)
    if not diff <= PARITY_LIMIT:  # also refuses NaN
        raise UserError(f"ONNX parity failed for {loaded.path}: max |Δ P(fake)| = {diff:.3g} on {len(x)} {kind} "
                        f"images (limit {PARITY_LIMIT:g}); nothing written")
    quantized = {}
    if quantize:
        if quantize not in SCHEMES:
            raise UserError(f"unknown --quantize {quantize!r}; valid: {', '.join(SCHEMES)}")
        calibration = None
        if quantize == "int8":  # static: activation ranges from the model's own validation images
            images = validation_images(loaded, CALIBRATION_IMAGES, half_step=True)
            if images is None:
                raise UserError(f"--quantize int8 calibrates on the model's validation images, and its data root "
                                f"{loaded.record.data.get('root')!r} has none here; use --quantize int8-dynamic "
                                "(no calibration, slower) or export where the data is")
            calibration = images.astype(np.float32) / np.float32(255.0)
        int8 = quantize_int8(data, loaded.arch, calibration)
        quantized = {"quantized": compare(data, int8, x, loaded.arch, INPUT, quantize,
                                          0 if calibration is None else len(calibration))}
        data = int8
    info = {"format": fmt, "file": out.name, "sha256": hashlib.sha256(data).hexdigest(), "opset": opset, **quantized,
            "input": INPUT, "output": OUTPUT, "output_meaning": "P(fake), the sigmoid of the detector's logit",
            "parity": {"n": len(x), "images": kind, "max_abs_diff": diff, "limit": PARITY_LIMIT}}
    atomic_write_bytes(out, data)
    atomic_write_text(out.parent / "MODEL_CARD.md", render_card(model_card(loaded), info))
    return {**info, "path": str(out), "card": str(out.parent / "MODEL_CARD.md")}


