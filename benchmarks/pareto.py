"""Accurate and fast: a two-objective search (val_auc, latency_ms) on the built-in data, its Pareto front, and
what each pick rule ships.

    python benchmarks/pareto.py [--trials 8] [--epochs 6] [--seeds 1] [--run NAME] [--skip-int8] [--no-finalize]

The space is search_spaces/demo.yaml (the demo's architectures; mobilenet_v2 is skipped offline, as in the demo)
with `objectives: [val_auc: max, latency_ms: min]`, `--trials` per architecture and at most `--epochs` epochs.
Then finalize --seeds S three times, with --pick best, "within:0.01" and "latency_ms<=B" (B = half the most
accurate trial's latency); finalize reuses every seed already trained, so each later pick retrains only its own
trial. Prints the front, each pick's valid AUC, test AUC and ms/image at batch 1 (measured by its trial, on this
machine), each trial's share of time spent measuring, and with int8 each picked model's ONNX export quantized:
its test AUC and ms/image under ONNX Runtime against fp32. `--run NAME` reuses a finished search of that name.
`--no-finalize` retrains nothing: each rule's trial is chosen on the leaderboard (valid AUC and its measured
latency only), and int8 is timed on that trial's architecture and hyperparameters freshly built (a latency does
not depend on the weights' values; parity and AUC do, so they are not reported then).
Target (issue 29): a picked model at least 2x faster than the most accurate, test AUC within 0.02 of it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from tune.core import UserError  # noqa: E402
from tune.reports.tables import picked_lines  # noqa: E402
from tune.runs.files import Comparison  # noqa: E402
from tune.runs.layout import Run  # noqa: E402
from tune.runs.leaderboard import load_leaderboard  # noqa: E402
from tune.serving.quantize import SCHEMES  # noqa: E402


def tune(*args: str) -> None:
    t0 = time.time()
    print("$ python -m tune " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "tune", *args], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    print(f"  ({time.time() - t0:.0f} s)", flush=True)


def space_file(trials: int, epochs: int, out: Path) -> Path:
    doc = yaml.safe_load((ROOT / "search_spaces" / "demo.yaml").read_text())
    doc.pop("metric", None)
    doc.pop("mode", None)
    doc["objectives"] = [{"val_auc": "max"}, {"latency_ms": "min"}]
    doc["budget"].update(trials=trials, max_epochs=epochs, grace_period=min(doc["budget"]["grace_period"], epochs))
    doc["latency"] = {"threads": 1, "batch": 32}
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


def test_auc(run: Run, model: str) -> float | None:
    row = next((r for r in Comparison.load(run.comparison("json")).rows if r.name == model), None)
    return row.cell("auc").value if row else None


def int8_text(run: Run) -> str:
    """The picked model exported fp32 (once) and in each quantization scheme: test AUC under ONNX Runtime of each,
    and the ms/image export measured (1 thread), or why a scheme was refused."""
    import numpy as np
    import onnxruntime as ort

    from tune.data.images import load_split
    from tune.metrics.classification import binary_metrics
    from tune.serving.export import INPUT, export

    model = run.path / "models" / "picked" / "best.pth"
    rec = json.loads((run.path / "models" / "picked" / "record.json").read_text())
    test = load_split(Path(rec["data"]["root"]), "test", int(rec["config"]["image_size"]))
    x = np.asarray(test.x).astype(np.float32) / np.float32(255.0)

    def auc(path: str) -> float:
        s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return binary_metrics(test.y, np.concatenate([s.run(None, {INPUT: x[i:i + 64]})[0]
                                                      for i in range(0, len(x), 64)]))["auc"]

    fp32 = auc(export(model, "onnx", run.path / "bench-int8" / "model.onnx")["path"])
    parts = []
    for scheme in SCHEMES:
        try:
            info = export(model, "onnx", run.path / "bench-int8" / f"model-{scheme}.onnx", quantize=scheme)
        except UserError as e:  # refused: past the parity limit, or not quantizable
            parts.append(f"{scheme}: {e}")
            continue
        q = info["quantized"]
        parts.append(f"{scheme}: {fp32:.3f} -> {auc(info['path']):.3f}, {q['ms_per_image_fp32']:.3g} -> "
                     f"{q['ms_per_image_int8']:.3g} (x{q['speedup']:.2f})")
    return "  " + "; ".join(parts)


def int8_speed(run: Run, arch: str, trial_id: str) -> dict:
    """fp32 vs each int8 scheme, ms/image at batch 1 (ONNX Runtime, one thread) of the trial's model, freshly built
    (static int8 calibrated on random images: only its speed is measured here)."""
    import numpy as np

    from tune.models.onnxrt import legacy_onnx, quantize_int8, session, session_median_ms
    from tune.runs.info import read_run, trial_config
    from tune.training.loop import make_model

    cfg = trial_config(read_run(run.path), arch, trial_id)
    s = cfg.image_size
    fp32 = legacy_onnx(make_model(cfg).cpu().eval(), s)
    x = np.random.default_rng(0).random((8, 3, s, s), dtype=np.float32)
    a = session_median_ms(session(fp32), x, "image")
    out = {"ms_per_image_fp32": a}
    for scheme, calibration in (("int8", x), ("int8-dynamic", None)):
        b = session_median_ms(session(quantize_int8(fp32, arch, calibration)), x, "image")
        out[scheme] = {"ms_per_image_int8": b, "speedup": a / b}
    return out


def remeasured(run: Run, arch: str, trial_id: str) -> float:
    """The trial's batch-1 ms/image measured again now, alone (its architecture freshly built, the space's serving
    settings): a search's own numbers share the machine with the other trial and whatever else runs."""
    from tune.metrics.costs import LatencySettings
    from tune.runs.info import read_run, trial_config
    from tune.training.latency import measure
    from tune.training.loop import make_model

    info = read_run(run.path)
    cfg = trial_config(info, arch, trial_id)
    serving = LatencySettings(**{**info.space.get("latency", {}), "repeats": 21})
    return float(measure(make_model(cfg), cfg.image_size, serving)["latency_ms"])


def leaderboard_picks(run: Run, board, rules: list[str], skip_int8: bool) -> None:
    from tune.runs.pareto import choose, parse_pick

    for rule in rules:
        try:
            row = choose(board, parse_pick(rule), "max")
        except UserError as e:
            print(f"{rule:<22} {e}")
            continue
        if row is None:  # best: the most accurate trial
            row = board.iloc[0]
        q = {} if skip_int8 else int8_speed(run, str(row["arch"]), str(row["trial_id"]))
        int8 = (f"  ORT, 1 thread: fp32 {q['ms_per_image_fp32']:.3g} ms/image; " + "; ".join(
            f"{k} {q[k]['ms_per_image_int8']:.3g} (x{q[k]['speedup']:.2f})" for k in SCHEMES)) if q else ""
        again = remeasured(run, str(row["arch"]), str(row["trial_id"]))
        print(f"{rule:<22} {row['arch'] + ' ' + row['trial_id']:<28} {row['score']:>9.4f} {'-':>9} "
              f"{row['latency_ms']:>9.3g} (alone: {again:.3g}){int8}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=8, help="trials per architecture (default: 8)")
    ap.add_argument("--epochs", type=int, default=6, help="max epochs a trial (default: the demo's 6)")
    ap.add_argument("--seeds", type=int, default=1, help="finalize seeds per model (default: 1)")
    ap.add_argument("--run", help="reuse a finished search of this name")
    ap.add_argument("--skip-int8", action="store_true")
    ap.add_argument("--no-finalize", action="store_true", help="choose on the leaderboard; retrain nothing")
    a = ap.parse_args()
    name = a.run or time.strftime("pareto-%Y%m%d-%H%M%S")
    t0 = time.time()
    if not a.run:
        space = space_file(a.trials, a.epochs, ROOT / "results" / f"{name}.yaml")
        tune("search", "--space", str(space), "--name", name, "--no-finalize")
    run = Run(ROOT / "results" / name)
    board = load_leaderboard(run.path)
    done = board[board["ended"].isin(["completed", "early_stopped"])]
    share = done["cost_s"] / done["wall_s"]  # wall_s (the sum of epoch_time) includes the measurement
    print(f"\n{len(board)} trials ({len(done)} finished); measuring costs took {done['cost_s'].median():.2f} s a "
          f"finished trial (median), {100 * share.median():.1f}% of its time (max {100 * share.max():.1f}%)")
    front = board[board["pareto"]][["arch", "trial_no", "trial_id", "score", "latency_ms", "latency_batch_ms",
                                    "params"]]
    front = front.assign(alone_ms=[remeasured(run, str(r.arch), str(r.trial_id)) for r in front.itertuples()])
    print("\nPareto front (finished trials; valid AUC against ms/image at batch 1 in the search, and alone after it):")
    print(front.sort_values("latency_ms").to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    best_ms = float(board.iloc[0]["latency_ms"])
    rules = ["best", "within:0.01", f"latency_ms<={best_ms / 2:.3g}"]
    print(f"\n{'rule':<22} {'model':<28} {'valid AUC':>9} {'test AUC':>9} {'ms/image':>9}  "
          "each int8 scheme: test AUC, ms/image")
    if a.no_finalize:
        leaderboard_picks(run, board, rules, a.skip_int8)
        rules = []
    for rule in rules:
        try:
            tune("finalize", name, "--seeds", str(a.seeds), "--pick", rule)
        except subprocess.CalledProcessError:
            print(f"{rule:<22} no trial meets it (finalize said which is closest)")
            continue
        pick = run.read().pick or {}
        model = pick.get("model") or str(board.iloc[0]["arch"])
        tid = pick.get("trial_id") or str(board.iloc[0]["trial_id"])
        row = board[board["trial_id"] == tid].iloc[0]
        int8 = "" if a.skip_int8 else int8_text(run)
        print(f"{rule:<22} {model + ' ' + tid:<28} {row['score']:>9.4f} {test_auc(run, model) or float('nan'):>9.4f} "
              f"{row['latency_ms']:>9.3g}{int8}", flush=True)
        for line in picked_lines(Comparison.load(run.comparison("json"))):  # its paired test against the best
            print(f"{'':<22} {line}", flush=True)
    print(f"\ntotal {time.time() - t0:.0f} s; run folder {run.path}")


if __name__ == "__main__":
    main()
