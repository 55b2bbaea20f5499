"""`python -m tune predict`."""

from __future__ import annotations

import argparse
from pathlib import Path

from tune import inference
from tune.cli.common import add_model
from tune.core import UserError, atomic_write_text
from tune.models.explain import check
from tune.serving.predict import collect_images, predict, render_csv, render_table


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="score images or videos with a finalized model (P(fake) and a Fake/Real "
                                       "label; a video: per frame too)")
    add_model(p, required=True)
    p.add_argument("images", type=Path, nargs="+", metavar="IMAGE_OR_FOLDER", help="image or video files, or folders")
    p.add_argument("--csv", type=Path, help="write path,p_fake,label,error to this file instead of a table")
    p.add_argument("--explain", type=Path, metavar="DIR", help="also write, per image, where the model looked "
                   "(Grad-CAM for Fake): NAME.cam.png overlay with P(fake) and NAME.cam.npy raw map")
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    loaded = inference.load(a.model)
    for note in loaded.notes:
        print(f"note: {note}")
    files = collect_images(a.images)
    if not files:
        raise UserError(f"no images found in {', '.join(map(str, a.images))} "
                        "(expected image files, or folders with .jpg/.jpeg/.png/.bmp/.webp files)")
    if a.explain:  # a model that cannot be explained is one line before anything is scored or written

        check(loaded.model, loaded.arch, loaded.image_size)
    rows = predict(loaded, files, a.explain)
    bad = sum(1 for r in rows if r.error)
    if a.csv:
        atomic_write_text(a.csv, render_csv(rows))
        print(f"wrote {len(rows)} prediction(s) to {a.csv}")
    else:
        print(render_table(rows), end="")
    fakes = sum(1 for r in rows if r.label == "Fake")
    print(f"{len(rows) - bad} image(s) scored ({fakes} Fake; {bad} unreadable)")
    if a.explain:
        print(f"wrote {len(rows) - bad} Grad-CAM overlay(s) (.cam.png) and map(s) (.cam.npy) to {a.explain}, "
              "listed in explain.csv")
    return 0
