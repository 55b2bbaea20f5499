"""Accurate and fast: a two-objective search (val_auc, latency_ms) on the built-in data, its Pareto front, and
what each pick rule ships.

    python benchmarks/pareto.py [--trials 8] [--epochs 6] [--seeds 1] [--run NAME] [--skip-int8]

The space is search_spaces/demo.yaml (the demo's architectures; mobilenet_v2 is skipped offline, as in the demo)
with `objectives: [val_auc: max, latency_ms: min]`, `--trials` per architecture and at most `--epochs` epochs.
Then finalize --seeds S three times, with --pick best, "within:0.01" and "latency_ms<=B" (B = half the most
accurate trial's latency); finalize reuses every seed already trained, so each later pick retrains only its own
trial. Prints the front, each pick's valid AUC, test AUC and ms/image at batch 1 (measured by its trial, on this
machine), each trial's share of time spent measuring, and with int8 each picked model's ONNX export quantized:
its test AUC and ms/image under ONNX Runtime against fp32. `--run NAME` reuses a finished search of that name.
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

from tune.runs.layout import Run  # noqa: E402
from tune.runs.leaderboard import load_leaderboard  # noqa: E402


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
    cmp = json.loads(run.comparison("json").read_text())
    row = next((r for r in cmp["rows"] if r["name"] == model), None)
    return row["at_0.5"]["auc"]["value"] if row else None


def int8_numbers(run: Run) -> dict:
    """The picked model exported fp32 and int8: ms/image under ONNX Runtime (1 thread) and test AUC of each."""
    import numpy as np
    import onnxruntime as ort

    from tune.data.images import load_split
    from tune.metrics.classification import binary_metrics
    from tune.serving.export import INPUT, export

    model = run.path / "models" / "picked" / "best.pth"
    info = export(model, "onnx", run.path / "bench-int8" / "model-int8.onnx", quantize="int8")
    q = info["quantized"]
    rec = json.loads((run.path / "models" / "picked" / "record.json").read_text())
    test = load_split(Path(rec["data"]["root"]), "test", int(rec["config"]["image_size"]))
    x = np.asarray(test.x).astype(np.float32) / np.float32(255.0)
    out = {}
    fp32 = export(model, "onnx", run.path / "bench-int8" / "model.onnx")
    for kind, path in (("fp32", fp32["path"]), ("int8", info["path"])):
        s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        p = np.concatenate([s.run(None, {INPUT: x[i:i + 64]})[0] for i in range(0, len(x), 64)])
        out[kind] = binary_metrics(test.y, p)["auc"]
    return {**q, "auc_fp32": out["fp32"], "auc_int8": out["int8"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=8, help="trials per architecture (default: 8)")
    ap.add_argument("--epochs", type=int, default=6, help="max epochs a trial (default: the demo's 6)")
    ap.add_argument("--seeds", type=int, default=1, help="finalize seeds per model (default: 1)")
    ap.add_argument("--run", help="reuse a finished search of this name")
    ap.add_argument("--skip-int8", action="store_true")
    a = ap.parse_args()
    name = a.run or time.strftime("pareto-%Y%m%d-%H%M%S")
    t0 = time.time()
    if not a.run:
        space = space_file(a.trials, a.epochs, ROOT / "results" / f"{name}.yaml")
        tune("search", "--space", str(space), "--name", name, "--no-finalize")
    run = Run(ROOT / "results" / name)
    board = load_leaderboard(run.path)
    done = board[board["ended"].isin(["completed", "early_stopped"])]
    share = done["cost_s"] / (done["wall_s"] + done["cost_s"])
    print(f"\n{len(board)} trials ({len(done)} finished); measuring costs took {done['cost_s'].median():.2f} s a "
          f"finished trial (median), {100 * share.median():.1f}% of its time (max {100 * share.max():.1f}%)")
    front = board[board["pareto"]][["arch", "trial_no", "trial_id", "score", "latency_ms", "latency_batch_ms",
                                    "params"]]
    print("\nPareto front (finished trials; valid AUC against ms/image at batch 1):")
    print(front.sort_values("latency_ms").to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    best_ms = float(board.iloc[0]["latency_ms"])
    rules = ["best", "within:0.01", f"latency_ms<={best_ms / 2:.3g}"]
    print(f"\n{'rule':<22} {'model':<28} {'valid AUC':>9} {'test AUC':>9} {'ms/image':>9}  int8: test AUC, ms/image")
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
        q = {} if a.skip_int8 else int8_numbers(run)
        int8 = (f"  {q['auc_fp32']:.3f} -> {q['auc_int8']:.3f}, {q['ms_per_image_fp32']:.3g} -> "
                f"{q['ms_per_image_int8']:.3g} (x{q['speedup']:.2f})") if q else ""
        print(f"{rule:<22} {model + ' ' + tid:<28} {row['score']:>9.4f} {test_auc(run, model) or float('nan'):>9.4f} "
              f"{row['latency_ms']:>9.3g}{int8}", flush=True)
    print(f"\ntotal {time.time() - t0:.0f} s; run folder {run.path}")


if __name__ == "__main__":
    main()
