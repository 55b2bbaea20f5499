"""Feeding a trial from Ray Data's streaming reads against this project's decode-once memory-mapped split.

    python benchmarks/ray_data_vs_mmap.py --data ROOT [--split train] [--px 224] [--epochs 2] [--batch 32]

Issue 27 asked to measure Ray Data's streaming reads (and its per-node object spilling) against the
memory-mapped .npy files (tune/data/mapped.py) and keep whichever is better. Side by side in one run, on the
same images, each epoch yielding every image once as uint8 batches turned into float tensors:

- mmap: the split decoded once into a .npy file (its own timing), then per epoch the trainer's exact seeded
  permutation (tune/training/loop.py batch_plan) read from the map;
- ray-local: `ray.data.read_images` decoding the image files at every epoch, streamed through
  `iter_torch_batches` with a local shuffle buffer of 1,000 rows (not a permutation of the split: a row
  can only move within the buffer's reach);
- ray-global: the same with `random_shuffle(seed=epoch)` first, Ray Data's exact global shuffle, which is
  what the trainer's reproducible permutation needs.

For each: seconds per epoch, images per second, and the peak private memory (RssAnon) summed over this
process and every Ray process, plus the object store's peak (the largest RssShmem). The decode of each
reader is its own (this project's resize for mmap, PIL's through Ray Data), so the pixels differ slightly;
the cost is what is compared.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # scale.py, next to this script
from scale import MARKER, marked, status_kb  # noqa: E402  # the /proc readers, shared with the scale benchmark


def ours(tag: str) -> list[int]:
    """This process and every process started from it (Ray's inherit the marker in their environment)."""
    return [os.getpid(), *(p for p in marked(tag) if p != os.getpid())]


class Peak(threading.Thread):
    """Every 0.2 s, the summed RssAnon of our processes and the largest RssShmem; their peaks since reset()."""

    def __init__(self, tag: str) -> None:
        super().__init__(daemon=True)
        self.tag, self.anon, self.shm = tag, 0, 0

    def reset(self) -> None:
        self.anon = self.shm = 0

    def run(self) -> None:
        while True:
            pids = ours(self.tag)
            self.anon = max(self.anon, sum(status_kb(p, "RssAnon") for p in pids))
            self.shm = max(self.shm, max(status_kb(p, "RssShmem") for p in pids))
            time.sleep(0.2)


def consume(batch: torch.Tensor) -> float:
    """What a trainer does first with a uint8 batch: float in [0, 1] (and a number, so nothing is skipped)."""
    return float(batch.float().div_(255).mean())


def mmap_epochs(root: Path, split: str, px: int, epochs: int, batch: int, work: Path) -> tuple[float, list[float], int]:
    from tune.data.images import load_split

    t = time.perf_counter()
    data = load_split(root, split, px, cache_dir=work / "decoded")
    decode_s = time.perf_counter() - t
    x, n, times = data.x, len(data), []
    for epoch in range(epochs):
        t = time.perf_counter()
        order = np.random.default_rng(epoch).permutation(n)
        for i in range(0, n, batch):
            idx = np.sort(order[i:i + batch])  # sorted rows read the map in file order; the batch is the same set
            consume(torch.from_numpy(np.asarray(x[idx])))
        times.append(time.perf_counter() - t)
    return decode_s, times, n


def ray_epochs(root: Path, split: str, px: int, epochs: int, batch: int, global_shuffle: bool) -> list[float]:
    import ray.data

    files = [str(p) for cls in ("Fake", "Real") for p in sorted((root / split / cls).iterdir())]
    times = []
    for epoch in range(epochs):
        t = time.perf_counter()
        ds = ray.data.read_images(files, size=(px, px), mode="RGB")
        if global_shuffle:
            batches = ds.random_shuffle(seed=epoch).iter_torch_batches(batch_size=batch, device="cpu")
        else:
            batches = ds.iter_torch_batches(batch_size=batch, device="cpu", local_shuffle_buffer_size=1000,
                                            local_shuffle_seed=epoch)
        rows = 0
        for b in batches:
            consume(b["image"])
            rows += len(b["image"])
        times.append(time.perf_counter() - t)
        assert rows == len(files), (rows, len(files))
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="dataset root with SPLIT/{Fake,Real}/")
    ap.add_argument("--split", default="train")
    ap.add_argument("--px", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--cpus", type=int, default=2, help="Ray's CPUs (Ray Data's read tasks)")
    a = ap.parse_args()
    tag = uuid.uuid4().hex
    os.environ[MARKER] = tag
    torch.set_num_threads(1)
    peak = Peak(tag)
    peak.start()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        peak.reset()
        decode_s, times, n = mmap_epochs(a.data, a.split, a.px, a.epochs, a.batch, Path(tmp))
        rows.append(("mmap", times, peak.anon, peak.shm, f"decode once {decode_s:.1f} s"))
    import ray

    ray.init(address="local", num_cpus=a.cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        for name, global_shuffle in (("ray-local", False), ("ray-global", True)):
            time.sleep(1)
            peak.reset()
            rows.append((name, ray_epochs(a.data, a.split, a.px, a.epochs, a.batch, global_shuffle), peak.anon,
                         peak.shm, "decodes every epoch"))
    finally:
        ray.shutdown()
    print(f"{n} images of split '{a.split}' at {a.px} px ({n * 3 * a.px * a.px / 1e6:.0f} MB decoded), "
          f"batch {a.batch}, {a.epochs} epochs, Ray with {a.cpus} CPUs, {os.cpu_count()} cores")
    print("| reader | s per epoch (each) | images/s | peak RssAnon MB | object store MB | note |")
    print("|---|---|---|---|---|---|")
    base = float(np.median(rows[0][1]))
    for name, times, anon, shm, note in rows:
        med = float(np.median(times))
        print(f"| {name} | {', '.join(f'{t:.1f}' for t in times)} | {n / med:.0f} ({base / med:.2f}x mmap) | "
              f"{anon / 1024:.0f} | {shm / 1024:.0f} | {note} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
