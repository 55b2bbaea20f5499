"""Videos: how fast they become face crops, what scoring per video buys over scoring per frame, and whether memory
stays flat in the number of videos. Everything on the built-in face clips (tune/data/builtin_video.py), offline.

    python benchmarks/video.py [--frames 8] [--size 128] [--videos 20 80 240] [--seeds 3] [--auc-size 256]
                               [--only auc] [--out DIR]

1. Detectors: ms per frame of each offline detector (MTCNN, Haar) on 128 px and 256 px frames (median of 20).
2. Preprocessing (a fresh cache, the largest --videos set): videos/s and frames/s of load_split (decode, detect,
   crop, store, decode into the memory-mapped cache), and the share of decoding against face detection (timed
   apart on the same clips: read_frames, then crop_face on each sampled frame).
3. Peak memory against the number of videos: each --videos set loaded by a fresh process (load_split of train with
   face cropping into the decoded cache); its peak RSS and its private (anonymous) memory at the end.
4. Video against frame AUC: ImageNet EfficientNet-Lite0 (packaged weights, its top 6 units and head trained) fine-tuned
   by tune.training.loop.fit (96 px inputs from 128 px face crops, 8 epochs, patience 3, kept by val_auc) on 60 clips
   per class of --auc-size px, --seeds seeds; test AUC per frame, and per video with each aggregation.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}
if any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from tune.data.builtin_video import generate_face_videos  # noqa: E402
from tune.data.faces import DETECTORS, FaceSettings, crop_face, detector  # noqa: E402
from tune.data.frames import Preprocess  # noqa: E402
from tune.data.images import load_split  # noqa: E402
from tune.data.video import read_frames  # noqa: E402
from tune.metrics.video import AGGREGATIONS, by_video  # noqa: E402

FACES = {"detector": "mtcnn", "margin": 1.3, "size": 128}


def detector_ms() -> dict[str, dict[int, float]]:
    import skimage.data
    from PIL import Image

    photo = skimage.data.astronaut()
    out: dict[str, dict[int, float]] = {}
    for name in DETECTORS:
        find = detector(name)
        out[name] = {}
        for side in (128, 256):
            frame = np.asarray(Image.fromarray(photo).resize((side, side)))
            find(frame)  # warm
            times = []
            for _ in range(20):
                t0 = time.perf_counter()
                find(frame)
                times.append(time.perf_counter() - t0)
            out[name][side] = 1000 * float(np.median(times))
    return out


def preprocessing(data: Path, frames: int, cache: Path) -> dict[str, float]:
    clips = sorted(data.rglob("*.mp4"))
    t0 = time.perf_counter()
    s = load_split(data, "train", 64, prep=Preprocess.parse({"frames": frames}, FACES), cache_dir=cache / "decoded")
    total = time.perf_counter() - t0
    n_train = len(set(s.videos or []))
    decode = detect = 0.0
    settings = FaceSettings(**FACES)  # type: ignore[arg-type]
    n_frames = 0
    for c in clips:
        t = time.perf_counter()
        fr = read_frames(c, frames)
        decode += time.perf_counter() - t
        t = time.perf_counter()
        for img in fr.images:
            crop_face(img, settings)
        detect += time.perf_counter() - t
        n_frames += len(fr.images)
    return {"videos": n_train, "rows": len(s), "seconds": total, "videos_per_s": n_train / total,
            "frames_per_s": len(s) / total, "decode_share": decode / (decode + detect),
            "detect_share": detect / (decode + detect), "decode_ms_per_video": 1000 * decode / len(clips),
            "detect_ms_per_frame": 1000 * detect / n_frames}


def memory_child(data: str, frames: int, cache: str) -> None:
    """Run in a fresh process: load the train split, then print peak RSS and private memory (MB) as JSON."""
    s = load_split(Path(data), "train", 64, prep=Preprocess.parse({"frames": frames}, FACES),
                   cache_dir=Path(cache) / "decoded")
    anon = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith("RssAnon:"))
    print(json.dumps({"videos": len(set(s.videos or [])), "rows": len(s),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "rss_anon_mb": anon / 1024}))


def auc_levels(data: Path, frames: int, seeds: int, cache: Path) -> dict[str, object]:
    import torch

    from tune.training.config import TrainConfig
    from tune.training.loop import fit

    torch.set_num_threads(2)
    prep = Preprocess.parse({"frames": frames}, FACES)
    train, valid, test = (load_split(data, s, 96, prep=prep, cache_dir=cache / "decoded")
                          for s in ("train", "valid", "test"))
    rows = []
    for seed in range(seeds):
        cfg = TrainConfig.of(arch="efficientnet_lite0", image_size=96, epochs=8, patience=3, monitor="val_auc",
                             lr=1e-3, backbone_lr_mult=0.3, batch_size=32, seed=seed, unfrozen_blocks=6,
                             head_sizes=[64], use_cache=False)
        result = fit(cfg, train, valid, log=None)
        from tune.inference import probabilities

        p = probabilities(result.model, np.asarray(test.x))
        row = {"seed": seed, "frame_auc": float(roc_auc_score(test.y, p))}
        for how in AGGREGATIONS:
            v = by_video(test.y, p, test.videos or [], how, 3)
            row[f"video_auc_{how}"] = float(roc_auc_score(v.y, v.p))
        rows.append(row)
        print(f"  seed {seed}: {row}", flush=True)
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "seed"}
    return {"n_test_videos": len(set(test.videos or [])), "n_test_frames": len(test), "seeds": rows, "mean": mean}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=8, help="frames sampled per clip (K)")
    ap.add_argument("--size", type=int, default=128, help="clip frame side in px")
    ap.add_argument("--videos", type=int, nargs="+", default=[20, 80, 240], help="clips per memory point")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--auc-size", type=int, default=256, help="frame side of the clips the AUC part trains on")
    ap.add_argument("--only", choices=["auc"], help="run only the AUC part")
    ap.add_argument("--out", type=Path, default=None, help="where video_benchmark.json goes (default: a temp dir)")
    ap.add_argument("--memory-child", nargs=3, metavar=("DATA", "FRAMES", "CACHE"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.memory_child:
        memory_child(a.memory_child[0], int(a.memory_child[1]), a.memory_child[2])
        return
    work = Path(tempfile.mkdtemp(prefix="video-bench-"))
    out: dict[str, object] = {"frames": a.frames, "size": a.size, "faces": FACES, "cpus": os.cpu_count()}
    if a.only != "auc":
        speed_and_memory(a, work, out)
    auc_data = work / "auc"
    generate_face_videos(auc_data, n_per_class=60, frames=24, size=a.auc_size, seed=2)
    out["auc"] = auc_levels(auc_data, a.frames, a.seeds, work / "cache-auc")
    print("AUC:", out["auc"]["mean"], flush=True)  # type: ignore[index]
    dest = (a.out or work) / "video_benchmark.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {dest}")


def speed_and_memory(a: argparse.Namespace, work: Path, out: dict[str, object]) -> None:
    out["detector_ms"] = detector_ms()
    print("detector ms per frame:", out["detector_ms"], flush=True)
    memory = []
    for n in sorted(a.videos):
        data = work / f"v{n}"
        t0 = time.perf_counter()
        generate_face_videos(data, n_per_class=max(2, n // 2), frames=24, size=a.size, seed=1)
        gen = time.perf_counter() - t0
        cache = work / f"cache{n}"
        r = subprocess.run([sys.executable, __file__, "--memory-child", str(data), str(a.frames), str(cache)],
                           capture_output=True, text=True, check=True, env={**os.environ, "TUNE_CACHE_DIR": str(cache)})
        point = {"clips_generated": n, "generation_s": gen, **json.loads(r.stdout.strip().splitlines()[-1])}
        memory.append(point)
        print("memory:", point, flush=True)
    out["memory"] = memory
    largest = work / f"v{max(a.videos)}"
    out["preprocessing"] = preprocessing(largest, a.frames, work / "cache-speed")
    print("preprocessing:", out["preprocessing"], flush=True)


if __name__ == "__main__":
    main()
