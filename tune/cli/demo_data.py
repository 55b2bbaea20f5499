"""`python -m tune demo-data`."""

from __future__ import annotations

import argparse

from tune.cli.common import add_out, add_seed
from tune.data import builtin as demo_data
from tune.data.builtin_video import DEFAULTS, generate_face_videos
from tune.data.zoo import DEFAULT, FAMILIES


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo-data", help="write the built-in real-vs-fake dataset (offline, deterministic)")
    add_out(p, required=True)
    p.add_argument("--n-per-class", type=int, default=None, help="images per class over all splits")
    p.add_argument("--size", type=int, default=None, help="image side in pixels")
    add_seed(p, "the generator (its autoencoder) and every random draw (default: 0)")
    p.add_argument("--tiles-seed", type=int, help="how the photos are cut into tiles dealt to the splits (default: "
                   "--seed); datasets of several generators with one --tiles-seed share no photo region across "
                   "splits")
    p.add_argument("--generator", default=DEFAULT, metavar="FAMILY",
                   help="the generator family that makes the fakes, each leaving other traces (default: %(default)s): "
                   + "; ".join(f"{f.name}: {f.about}" for f in FAMILIES.values()))
    p.add_argument("--videos", action="store_true", help="write face videos instead (mp4 clips of a face photo under "
                   "a moving, zooming camera; the fakes' faces re-synthesized): --n-per-class clips per class "
                   "(default 20), --size px frames (default 128), --frames per clip")
    p.add_argument("--frames", type=int, default=None, help="with --videos: frames per clip (default 24)")
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    if a.videos:
        generate_face_videos(a.out, n_per_class=a.n_per_class or DEFAULTS["n_per_class"],
                             frames=a.frames or DEFAULTS["frames"], size=a.size or DEFAULTS["size"], seed=a.seed)
        print(f"wrote the built-in face videos to {a.out}")
        return 0

    summary = demo_data.generate_demo_data(a.out, n_per_class=a.n_per_class or demo_data.DEFAULT_N_PER_CLASS,
                                           size=a.size or demo_data.DEFAULT_SIZE, seed=a.seed, tiles_seed=a.tiles_seed,
                                           generator=a.generator)
    print(f"wrote the built-in dataset to {a.out}: {summary.get('counts', summary)}")
    return 0
