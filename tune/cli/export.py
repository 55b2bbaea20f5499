"""`python -m tune export`."""

from __future__ import annotations

import argparse

from tune.cli.common import add_format, add_model_choice, add_out, model_choice
from tune.serving.export import FORMATS, export
from tune.serving.quantize import SCHEMES
from tune.serving.serve import model_path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a model to ONNX (parity-checked under onnxruntime) with a model card")
    add_model_choice(p, run_help="instead of --model: RUN's picked model (finalize --pick), or with --arch its "
                     "finalized model of that architecture", arch_help="with --run: which finalized model")
    add_format(p, FORMATS, "onnx")
    p.add_argument("--quantize", choices=SCHEMES, help="int8: ONNX Runtime static quantization calibrated on the "
                   "model's validation images; int8-dynamic: no calibration (slower on convolutions). Either is "
                   "checked against fp32 (max |Δ P(fake)| <= 0.05 on the parity images) and timed (default: fp32)")
    add_out(p, "output file (default: MODEL_DIR/STEM-onnx/model.onnx); MODEL_CARD.md is written beside it")
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    info = export(model_path(model_choice(a)), a.format, a.out, a.quantize)
    p = info["parity"]
    q = info.get("quantized")
    if q:
        print(f"{q['name']}: max |Δ P(fake)| vs fp32 {q['max_abs_diff']:.3g} <= {q['limit']:g} "
              f"(mean {q['mean_abs_diff']:.2g}) on {q['n']} images; {q['ms_per_image_fp32']:.3g} -> "
              f"{q['ms_per_image_int8']:.3g} ms/image at batch 1 (x{q['speedup']:.2f}); "
              f"{q['bytes_fp32'] / 1e6:.2f} -> {q['bytes_int8'] / 1e6:.2f} MB")
    print(f"wrote {info['path']} ({info['format']}, opset {info['opset']}; input {info['input']} float [0,1] NCHW, "
          f"output {info['output']} = P(fake)); parity on {p['n']} {p['images']} images: max |Δ| "
          f"{p['max_abs_diff']:.2e} <= {p['limit']:.0e}; model card: {info['card']}")
    return 0
