"""What a served or exported model is, said once: `GET /model` answers `model_card()`, and
`export` renders the same description as a Hugging Face style MODEL_CARD.md.

The description carries the test metrics with 95% bootstrap intervals for this exact model
file (recomputed from the test predictions finalize saved beside it), the threshold and how
it was chosen, the data fingerprints, where the weights came from, and, if the model was
evaluated on other generators or perturbations (`evaluate`), which ones. File-system paths
are left out: the description is served over HTTP, and paths say nothing about the model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tune.core import UserError, file_sha256
from tune.metrics import bootstrap as stats
from tune.metrics.cells import Cell, cell_of
from tune.metrics.classification import AT_HALF, AT_VALID, METRICS, THRESHOLD_RULES
from tune.reports.tables import Table, label, rule_name
from tune.runs.files import EVALUATION, Comparison, Evaluation
from tune.runs.layout import run_of_model
from tune.training.records import PREDICTIONS, WEIGHTS, read_predictions

if TYPE_CHECKING:
    from tune.inference import LoadedModel



def related_files(loaded: LoadedModel) -> dict[str, Path]:
    """The files of a run folder that say more about this model. The one place that builds run-folder
    paths here: models/ARCH.pth and finalize/NAME/seedS/best.pth live in RUN/, a train folder in itself."""
    path = loaded.path.absolute()
    run = run_of_model(path)
    source = loaded.record.source
    src = (run.recorded(source) if run is not None else Path(source)) if source else path.parent
    found = {"predictions": src / PREDICTIONS, "weights_of_predictions": src / WEIGHTS}
    if run is not None:
        found.update(comparison=run.comparison("json"), evaluation=run.extra_test / EVALUATION)
    return {k: v for k, v in found.items() if v.is_file()}


def _clean(x: Any) -> Any:
    """JSON-safe: NaN/inf become null (JSON has no NaN), tuples lists, numpy scalars floats."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, float) or type(x).__module__ == "numpy":
        v = float(x)
        return None if math.isnan(v) or math.isinf(v) else v
    return x


def test_metrics(loaded: LoadedModel, files: dict[str, Path]) -> dict[str, Any] | None:
    """{rule: {metric: cell}} of this model on the test split: from its own test predictions through the one engine
    (tune.metrics.bootstrap.score, as finalize and evaluate) when finalize saved them for this exact file, else
    the record's test metrics without intervals."""
    record = loaded.record
    metrics = record.test  # ModelRecord.load reads the old name, test_metrics, too
    if not metrics:
        return None
    out: dict[str, Any] = {"n_test": None, "interval": None, "rules": {}}
    pred = files.get("predictions")
    same_weights = "weights_of_predictions" in files and file_sha256(files["weights_of_predictions"]) == loaded.sha256
    if pred is not None and same_weights:
        try:
            _, y, p = read_predictions(pred)
        except (OSError, ValueError, KeyError) as e:  # no intervals, rather than no description
            out["interval"] = f"none: {pred.name} is unreadable ({type(e).__name__})"
        else:
            one = stats.Predictor(p[None, :], {AT_VALID: [loaded.threshold], AT_HALF: [0.5]},
                                  over_seeds=False)
            fingerprint = record.data.get("test_fingerprint") or "0"
            cells, _ = stats.score(y, {"m": one}, fingerprint=fingerprint)
            out.update(n_test=len(y), rules={rule: {m: c.to_dict() for m, c in got.items()}
                                             for rule, got in cells["m"].items()},
                       interval=f"95% percentile bootstrap over test images ({stats.RESAMPLES} stratified resamples, "
                                "seeded by the test split's fingerprint)")
            return out
    for rule in THRESHOLD_RULES:
        if rule in metrics:
            out["rules"][rule] = {m: Cell(metrics[rule][m]).to_dict() for m in METRICS if m in metrics[rule]}
            if out["n_test"] is None and all(k in metrics[rule] for k in ("tp", "fp", "fn", "tn")):
                out["n_test"] = sum(int(metrics[rule][k]) for k in ("tp", "fp", "fn", "tn"))
    return out


def evaluation(loaded: LoadedModel, files: dict[str, Path]) -> dict[str, Any] | None:
    """Which generators (sources) and perturbations this model was evaluated on, with AUC per row
    (the evaluation.json contract; finalize --extra-test embeds it in comparison.json)."""
    ev = None
    try:
        if "evaluation" in files:
            ev = Evaluation.load(files["evaluation"])
        elif "comparison" in files:
            ev = Comparison.load(files["comparison"]).evaluation
    except (TypeError, KeyError, ValueError, UserError):  # no evaluation section, rather than no description
        return None
    if ev is None:
        return None
    names = [m.name for m in ev.models if m.sha256 in (loaded.sha256, None)]
    rows = [{"source": r.source, "condition": r.condition, "auc": r.cell("auc").to_dict(), "note": r.note}
            for r in ev.rows if r.model in names]
    if not rows:
        return None
    return {"sources": [{"name": s.name, "n_fake": s.n_fake, "n_real": s.n_real, "fingerprint": s.fingerprint}
                        for s in ev.sources], "conditions": [c.name for c in ev.conditions], "rows": rows}


def model_card(loaded: LoadedModel) -> dict[str, Any]:
    """Everything a user of the model should know about it (GET /model, MODEL_CARD.md)."""
    r = loaded.record
    files = related_files(loaded)
    data = {k: v for k, v in r.data.items() if k != "root"}  # fingerprints and counts
    return _clean({
        "arch": loaded.arch, "run": r.run, "trial": r.trial_id, "seed": r.seed,
        "file": loaded.path.name, "sha256": loaded.sha256, "image_size": loaded.image_size,
        "threshold": loaded.threshold, "threshold_rule": loaded.threshold_rule,
        "config": r.config, "weights_source": r.weights_source, "data": data,
        "chosen_by": r.chosen_by, "valid_best": r.best, "valid_score": r.valid_score,
        "test_metrics": test_metrics(loaded, files), "evaluation": evaluation(loaded, files),
        "versions": r.versions, "device_trained_on": r.device, "notes": loaded.notes,
        "preprocess": r.preprocess})


def _quantized(q: dict[str, Any] | None) -> list[str]:
    """The card's line on an int8 export (tune/serving/quantize.py): its drift from fp32 and its speed."""
    if not q:
        return []
    return [f"- Quantized: {q['scheme']}; against the fp32 model on the same {q['n']} images max |Δ P(fake)| = "
            f"{q['max_abs_diff']:.3g} (limit {q['limit']:g}), mean {q['mean_abs_diff']:.2g}; "
            f"{q['ms_per_image_fp32']:.3g} -> {q['ms_per_image_int8']:.3g} ms/image at batch 1, one thread "
            f"(x{q['speedup']:.2f})."]


def _preprocess(p: dict[str, Any] | None) -> list[str]:
    """The card's line on how inputs are cut from files before the resize (tune.data.frames.Preprocess): the
    exported graph takes the crops, so a user of the ONNX file must cut them the same way."""
    if not p or not p.get("faces"):
        return [f"- Videos: {p['video']['frames']} frames spaced evenly over the clip, each scored whole; the "
                "clip's P(fake) aggregates them (video_agg in the configuration)."] if p else []
    f = p["faces"]
    return [f"- Faces, before the resize: the largest face found by {f['detector']} (tune/data/faces.py), cut as a "
            f"square of {f['margin']:g} x the face box's longer side centred on it (black outside the frame), "
            f"resized bilinearly to {f['size']} px; a video: {p['video']['frames']} frames spaced evenly, each "
            "frame's crop scored, the clip's P(fake) their aggregation (video_agg in the configuration). Inputs "
            "cut any other way are not what the model was trained on."]


def render_card(d: dict[str, Any], export: dict[str, Any]) -> str:
    """MODEL_CARD.md in the Hugging Face model-card sections, for an exported model file."""
    cfg = d.get("config") or {}
    fp = d.get("data") or {}
    origin = "".join(f", {k} {d[k]}" for k in ("run", "trial", "seed") if d.get(k) is not None)
    lines = [f"# Deepfake image detector: {d['arch']} ({export['format'].upper()})", "",
             f"`{export['file']}` (sha256 `{export['sha256']}`), exported from `{d['file']}` "
             f"(sha256 `{d['sha256']}`){origin}.", "",
             "## Model details", "",
             f"- Architecture: {d['arch']}; configuration: `{json.dumps(cfg, sort_keys=True)}`",
             f"- Weights: {d.get('weights_source') or 'unknown'}",
             f"- Input `{export['input']}`: float32 RGB, shape (N, 3, {d['image_size']}, {d['image_size']}), "
             "values in [0, 1] (pixel / 255), "
             + ("the centre crop at native resolution (never resized)" if cfg.get("resize") == "crop" else
                "resized with bilinear interpolation")
             + f"; any normalisation, and the input transform ({cfg.get('input', 'rgb')}), is inside.",
             *_preprocess(d.get("preprocess")),
             f"- Output `{export['output']}`: {export['output_meaning']}, shape (N,).",
             f"- Decision rule: Fake when P(fake) >= {d['threshold']:.6g} ({d['threshold_rule']}).",
             f"- Exported with torch.onnx (opset {export['opset']}); parity with PyTorch under onnxruntime on "
             f"{export['parity']['n']} {export['parity']['images']} images: max |Δ P(fake)| = "
             f"{export['parity']['max_abs_diff']:.2e} (limit {export['parity']['limit']:.0e}).",
             *_quantized(export.get("quantized")), "",
             "## Intended use", "",
             "Flag images that are likely synthesised or manipulated (label Fake = 1), as one signal for a person "
             "or a moderation pipeline to review. Not for automated decisions about people, and not evidence on "
             "its own: the score is only as good as the match between your images and the training data.", "",
             "## Training data", ""]
    lines += [f"- {k.replace('_', ' ')}: `{v}`" for k, v in sorted(fp.items()) if k != "skipped"] or ["- not recorded"]
    lines += ["", "## Metrics", ""]
    tm = d.get("test_metrics")
    if tm and tm.get("rules"):
        lines += [f"Test split ({tm.get('n_test') or '?'} images, read once by finalize). Cells: value "
                  f"[{tm.get('interval') or 'no interval: the test predictions were not found'}].", "",
                  Table(["Threshold", *(label(m) for m in METRICS)],
                        [[rule_name(rule), *(cell_of(row.get(m)).text() for m in METRICS)]
                         for rule, row in tm["rules"].items()]).markdown()]
    else:
        vb = d.get("valid_best") or {}
        lines.append("No test-split evaluation is recorded for this file (a `train` folder's model). Best "
                     "validation epoch: " + (", ".join(f"{k} {v:.3f}" for k, v in sorted(vb.items())
                                                       if isinstance(v, float)) or "not recorded") + ".")
    lines += ["", "## Limitations", ""]
    ev = d.get("evaluation")
    if ev:
        srcs = ", ".join(f"{s['name']} ({s.get('n_fake')} fake / {s.get('n_real')} real)" for s in ev["sources"])
        lines += [f"- Evaluated on generators/sources: {srcs}; conditions: {', '.join(ev['conditions'])}.",
                  "- AUC per source and condition: " + "; ".join(
                      f"{r['source']}/{r['condition']} {cell_of(r['auc']).text()}" for r in ev["rows"]) + "."]
    else:
        lines.append("- Not evaluated on other generators or perturbations (no `evaluate` results for this model): "
                     "expect lower scores on fakes from generators unlike the training data, and after "
                     "re-compression, resizing or blur.")
    lines += [f"- Trained and tested on {d['image_size']} px "
              + ("centre crops at native resolution; a smaller image is refused." if cfg.get("resize") == "crop"
                 else "images; other sizes are resized, which can hide traces."),
              "- The threshold was chosen on the validation split; re-check it on your own data.", "",
              "## How to reproduce", "", "```bash",
              f"python -m tune reproduce {d['run']} --trial {d['trial']}   # re-run the trial, check every epoch"
              if d.get("run") and d.get("trial") else "# the run folder's record.json holds the full config and seed",
              f"python -m tune export --model {d['file']} --format {export['format']}",
              "```", "", f"Library versions: `{json.dumps(d.get('versions') or {}, sort_keys=True)}`", ""]
    return "\n".join(lines)
