"""How memory, disk and time grow with the number of images: a short search and finalize at several sizes.

    python benchmarks/scale.py [--images 1000,4000[,16000]] [--px 224] [--data-dir DIR] [--work DIR]

Per size N (images over all three splits of the built-in data, `python -m tune demo-data`, kept in
--data-dir so runs before and after a change use the same files): a search (efficientnet_lite0, --unfrozen
blocks, default 5..18, 2 trials, 1 epoch) and `finalize --seeds 2`, each a subprocess, on a fresh cache per size.
Every 0.2 s it sums RssAnon (private memory: file-backed pages of a memory-mapped cache are not counted,
they are the page cache's) over every process carrying this run's marker in its environment: the
command and every Ray process it starts (Ray's processes inherit the driver's environment), and each one's
own peak. The object store is the largest RssShmem of any of them: the plasma store is shared memory, and
the process that puts an object (the driver, for tune.with_parameters) touches all its pages. Then du of the
cache and the run folder, and the wall split into decode (the three splits into the decoded cache, a
process of its own run first, so the search finds the cache warm as every run after a user's first
does), cache (from the search's "data:" line to its "[search]" line: Ray, weights, frozen-feature
precompute) and train (the rest of the search).

Finalize's peak is also split by phase, from its log (`finalize_phases`): setup, train (each epoch ends by
scoring valid), score (each job's valid and test predictions, the driver's bootstrap) and report.
The table ends with the least-squares slope of each peak in MB per 1k images, the same as a share of the
decoded data per 1k images (1000 x 3 x PX x PX bytes), and the peak extrapolated to 190k images.

Measured (issue 36, item 6), 2026-12-08, 2 shared cores (load 6-9 from other work), 96 px, 1 epoch,
--seeds 2, sizes 1k/2k/4k; peak summed RssAnon in MB:

| images | 5..18 (winners: 13, 13, 12 blocks) | 13..13 | 13..13: setup | train | score | report |
|---|---|---|---|---|---|---|
| 1000 | 2477 | 2531 | 1161 | 2337 | 2531 | 742 |
| 2000 | 2804 | 2558 | 1155 | 2375 | 2558 | 742 |
| 4000 | 2567 | 2521 | 1168 | 2408 | 2521 | 737 |
| slope per 1k | +9 | -6 | +3 | +23 | -6 | -2 |

Nothing in finalize holds a copy per image: the driver stays at 720-730 MB and each job maps the splits
(tests/test_mapped.py) and allocates a batch at a time (tests/test_flat_memory.py). What moved the peak:
- which network is retrained: with a range, each size's search picks another winner (another number of
  blocks that train, so other activations): --unfrozen 13..13 retrains the same network at every size;
- valid is scored 256 images a batch (tune/training/loop.py): below 256 valid images (N < 1.7k) that
  transient grows with N, then stops. Run in one process, one seed, 13 blocks: the epoch's peak 863, 871,
  868 MB at 1k, 2k, 4k; after scoring valid 899, 1073, 1051;
- glibc's high-water mark (tune/cli/common.py's ALLOCATOR_ENV keeps freed memory): the same network at 2k
  peaked at 1208 and 1164 MB per job in one run, 1142 and 985 in the other. Hence 3 sizes and a fit.
The score phase (every job's valid and test P(fake), plain and flipped, 64 images a batch) is finalize's
peak: two jobs at once, then 720-740 MB of the driver alone for the report.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = "TUNE_SCALE_BENCH"
FULL = 190_000  # the notebook's dataset: 140k train + 39k valid + 11k test
DECODE = ("import sys; from pathlib import Path; from tune.data.images import load_split; "
          "[load_split(Path(sys.argv[1]), s, int(sys.argv[2]), cache_dir=Path(sys.argv[3])) "
          "for s in ('train', 'valid', 'test')]")
SPACE = """metric: val_auc
mode: max
seed: 0
image_size: {px}
budget: {{trials: 2, max_epochs: 1, grace_period: 1, reduction_factor: 2, patience: 3}}
resources: {{cpus_per_trial: 1, gpus_per_trial: 0}}
fixed: {{batch_size: 32}}
architectures:
  efficientnet_lite0:
    weights: packaged
    unfrozen_blocks: {unfrozen}
    lr: {{type: loguniform, low: 3.0e-4, high: 3.0e-3}}
"""


def status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def marked(tag: str) -> list[int]:
    """PIDs whose environment carries MARKER=tag (ours and Ray's; other users' are unreadable, skipped)."""
    want = f"{MARKER}={tag}".encode()
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if want in (d / "environ").read_bytes().split(b"\0"):
                    out.append(int(d.name))
            except OSError:
                continue
    return out


class Sampler(threading.Thread):
    """Every 0.2 s: the summed RssAnon of the marked processes (its peak), each process's own peak, and the
    largest RssShmem of any of them (the object store's pages that the process putting objects touched)."""

    def __init__(self, tag: str) -> None:
        super().__init__(daemon=True)
        self.tag, self.anon_kb, self.shm_kb, self.done = tag, 0, 0, False
        self.each: dict[int, tuple[str, int]] = {}
        self.t0 = time.time()  # run_cmd resets it when the command starts
        self.series: list[tuple[float, int]] = []  # (s since t0, summed RssAnon kB): the phases' peaks

    def run(self) -> None:
        while not self.done:
            total = 0
            for p in marked(self.tag):
                anon, shm = status_kb(p, "RssAnon"), status_kb(p, "RssShmem")
                total += anon
                self.shm_kb = max(self.shm_kb, shm)
                try:
                    name = Path(f"/proc/{p}/comm").read_text().strip()
                except OSError:
                    continue
                self.each[p] = (name, max(anon, self.each.get(p, ("", 0))[1]))
            self.anon_kb = max(self.anon_kb, total)
            self.series.append((time.time() - self.t0, total))
            time.sleep(0.2)

    def peak_mb(self, start: float, end: float) -> float:
        """The summed RssAnon's peak between two times (s since t0), in MB."""
        return max((kb for t, kb in self.series if start <= t <= end), default=0) / 1024

    def top(self, k: int = 4) -> str:
        return ", ".join(f"{n} {kb / 1024:.0f}" for n, kb in sorted(self.each.values(), key=lambda e: -e[1])[:k])


def run_cmd(args: list[str], env: dict[str, str], log: Path) -> tuple[float, list[tuple[float, str]], Sampler]:
    """Run `python ARGS...`, sampling its memory; its lines with their times since start."""
    tag = uuid.uuid4().hex
    sampler = Sampler(tag)
    sampler.start()
    t0 = sampler.t0 = time.time()
    lines: list[tuple[float, str]] = []
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env={**env, MARKER: tag},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((time.time() - t0, line))
            f.write(line)
            f.flush()
        rc = proc.wait()
    wall = time.time() - t0
    time.sleep(0.5)  # let the sampler see the last of Ray's processes
    sampler.done = True
    sampler.join()
    if rc:
        raise SystemExit(f"{' '.join(args[:3])} failed ({rc}); see {log}")
    return wall, lines, sampler


def du_mb(path: Path) -> float:
    out = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True).stdout.split()
    return int(out[0]) / 1024 if out else 0.0


def finalize_phases(lines: list[tuple[float, str]], s: Sampler, wall: float) -> dict[str, float]:
    """Where finalize's peak is, by its log: setup (run, splits, the jobs starting) until the first "training"
    line; train until the last epoch line (each epoch ends with scoring valid at the evaluation batch); score
    (each job's valid and test predictions, plain and flipped, then the driver's bootstrap) until the first
    "costs:" line; report (latency, ONNX size, Grad-CAM panels, plots) to the end."""
    first = next((t for t, ln in lines if ": training " in ln), 0.0)
    last = max((t for t, ln in lines if "] epoch " in ln), default=first)
    costs = next((t for t, ln in lines if "] costs: " in ln), last)
    return {"f_setup_mb": s.peak_mb(0, first), "f_train_mb": s.peak_mb(first, last),
            "f_score_mb": s.peak_mb(last, costs), "f_report_mb": s.peak_mb(costs, wall + 1)}


def one_size(n: int, px: int, data_dir: Path, work: Path, unfrozen: str) -> dict[str, float]:
    data = data_dir / f"scale-n{n}-s{px}"
    env = dict(os.environ)
    if not data.exists():
        print(f"[scale] making {n} images at {px}px in {data}", flush=True)
        subprocess.run([sys.executable, "-m", "tune", "demo-data", "--out", str(data), "--n-per-class", str(n // 2),
                        "--size", str(px)], cwd=ROOT, check=True, env=env, stdout=subprocess.DEVNULL)
    here = work / f"n{n}"
    cache, results = here / "cache", here / "results"
    here.mkdir(parents=True, exist_ok=True)
    low, high = (int(b) for b in unfrozen.split(".."))
    # LOW == HIGH: one value, so every size finalizes the same network (a range lets each size's search pick
    # another winner, and a retraining's memory depends on how many blocks train)
    blocks = str(low) if low == high else f"{{type: int, low: {low}, high: {high}}}"
    (here / "space.yaml").write_text(SPACE.format(px=px, unfrozen=blocks))
    env = {**env, "TUNE_CACHE_DIR": str(cache)}
    name = f"scale-n{n}"
    # decoded first, on its own: the search then finds the cache warm, as every run after a user's first does
    decode, _, d = run_cmd(["-c", DECODE, str(data), str(px), str(cache / "decoded")], env, here / "decode.log")
    search = ["-m", "tune", "search", "--space", str(here / "space.yaml"), "--data", str(data), "--name", name,
              "--storage", str(results), "--no-finalize"]
    wall, lines, s = run_cmd(search, env, here / "search.log")
    t_data = next((t for t, ln in lines if ln.startswith("data:")), 0.0)
    t_search = next((t for t, ln in lines if ln.startswith("[search]")), t_data)
    fwall, flines, f = run_cmd(["-m", "tune", "finalize", str(results / name), "--seeds", "2"], env,
                               here / "finalize.log")
    row = {"n": n, "decoded_mb": n * 3 * px * px / 1e6, "decode_mb": d.anon_kb / 1024, "search_mb": s.anon_kb / 1024,
           "finalize_mb": f.anon_kb / 1024, "store_mb": max(s.shm_kb, f.shm_kb) / 1024, "cache_mb": du_mb(cache),
           "run_mb": du_mb(results / name), "decode_s": decode, "cache_s": t_search - t_data,
           "train_s": wall - t_search, "search_s": wall, "finalize_s": fwall, **finalize_phases(flines, f, fwall)}
    print("[scale] " + ", ".join(f"{k} {v:.1f}" for k, v in row.items()), flush=True)
    print(f"[scale] peak RssAnon MB by process: search {s.top()}; finalize {f.top()}", flush=True)
    shutil.rmtree(cache, ignore_errors=True)  # measured: the frozen-feature cache can take GBs of disk
    return row


def slope(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares y = a + b x: (a, b)."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / max(1e-9, sum((x - mx) ** 2 for x in xs))
    return my - b * mx, b


def table(rows: list[dict[str, float]], px: int) -> str:
    cols = [("n", "images"), ("decoded_mb", "decoded MB"), ("decode_mb", "decode peak RssAnon MB"),
            ("search_mb", "search peak RssAnon MB"),
            ("finalize_mb", "finalize peak RssAnon MB"), ("f_setup_mb", "setup"), ("f_train_mb", "train"),
            ("f_score_mb", "score"), ("f_report_mb", "report"), ("store_mb", "object store MB"),
            ("cache_mb", "cache MB"),
            ("run_mb", "run MB"), ("decode_s", "decode s"), ("cache_s", "cache s"), ("train_s", "train s"),
            ("finalize_s", "finalize s")]
    out = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(f"{r.get(k, math.nan):.0f}" for k, _ in cols) + " |" for r in rows]
    if len(rows) > 1:
        out.append("")
        per_k = 1000 * 3 * px * px / 1e6
        xs = [r["n"] / 1000 for r in rows]
        for k in ("decode_mb", "search_mb", "finalize_mb", "f_setup_mb", "f_train_mb", "f_score_mb", "f_report_mb",
                  "store_mb", "cache_mb"):
            if any(k not in r for r in rows):  # an earlier output of this script, from before the phases
                continue
            a, b = slope(xs, [r[k] for r in rows])
            out.append(f"{k}: {b:+.0f} MB per 1k images ({100 * b / per_k:.1f}% of the {per_k:.0f} MB decoded per "
                       f"1k), {(a + b * FULL / 1000) / 1024:.1f} GB at {FULL // 1000}k")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", default="1000,4000", help="sizes, images over all splits (add 16000 if time allows)")
    p.add_argument("--px", type=int, default=224)
    p.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "tune-scale-data")
    p.add_argument("--unfrozen", default="5..18", help="unfrozen_blocks range LOW..HIGH (of 18). Fewer unfrozen "
                   "blocks store larger frozen features: 5..18 stores 1.6 MB per image at 17 (see README); "
                   "LOW..LOW: that many at every size (finalize then retrains the same network at every size)")
    p.add_argument("--table", type=Path, nargs="+", metavar="LOG", help="only print the table of the rows these "
                   "earlier outputs of this script hold (sizes measured in separate runs)")
    p.add_argument("--work", type=Path, help="caches and runs (default: a temporary folder, removed after)")
    a = p.parse_args()
    if a.table:
        rows = [{k: float(v) for k, v in (kv.split(" ") for kv in line[len("[scale] "):].split(", "))}
                for log in a.table for line in log.read_text().splitlines() if line.startswith("[scale] n ")]
        print(table(sorted(rows, key=lambda r: r["n"]), a.px))
        return
    with tempfile.TemporaryDirectory(prefix="tune-scale-") as tmp:
        work = a.work or Path(tmp)
        rows = [one_size(int(n), a.px, a.data_dir, work, a.unfrozen) for n in a.images.split(",")]
    print(f"\n{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, {a.px}px, unfrozen {a.unfrozen}\n"
          + table(rows, a.px))


if __name__ == "__main__":
    main()
