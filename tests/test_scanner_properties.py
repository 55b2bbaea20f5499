"""Property test of the dataset scanner and loader: any folder tree either loads or gets a clear
DataError (one line naming a path), never a traceback, a hang or a wrong label."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tune.data.images import DataError, load_split

_png = io.BytesIO()
Image.fromarray(np.full((6, 6, 3), 99, np.uint8)).save(_png, format="PNG")
PNG = _png.getvalue()

contents = st.sampled_from([PNG, PNG[: len(PNG) // 2], b"", b"not an image", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
file_names = st.tuples(st.sampled_from(["a", "b", "img", "x y", "é"]),
                       st.sampled_from([".png", ".PNG", ".jpg", ".webp", ".txt", ""]))
entries = st.lists(st.tuples(file_names, contents), max_size=4)
class_names = st.sampled_from(["Fake", "Real", "fake", "REAL", "other"])
split_names = st.sampled_from(["train", "valid", "Val", "validation", "test", "junk"])
kinds = st.sampled_from(["dir", "file", "link-up", "missing"])
trees = st.dictionaries(split_names, st.tuples(kinds, st.dictionaries(class_names, st.tuples(kinds, entries),
                                                                       max_size=3)), max_size=4)


def build(root: Path, tree: dict) -> None:
    root.mkdir()
    for split, (kind, classes) in tree.items():
        sp = root / split
        if kind == "file":
            sp.write_bytes(b"x")
            continue
        if kind == "missing":
            continue
        sp.mkdir(exist_ok=True)
        if kind == "link-up":
            os.symlink(root, sp / "loop")
        for cls, (ckind, files) in classes.items():
            cp = sp / cls
            if cp.exists():
                continue
            if ckind == "file":
                cp.write_bytes(PNG)
                continue
            if ckind == "missing":
                continue
            cp.mkdir()
            if ckind == "link-up":
                os.symlink(sp, cp / "up")
            for (stem, ext), data in files:
                (cp / f"{stem}{ext}").write_bytes(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees, st.booleans())
def test_any_tree_loads_or_gives_one_clear_line(tree: dict, skip_bad: bool) -> None:
    tmp = Path(tempfile.mkdtemp())
    try:
        build(tmp / "root", tree)
        for split in ("train", "valid"):
            try:
                s = load_split(tmp / "root", split, 8, skip_bad=skip_bad)
            except DataError as e:
                msg = str(e)
                assert "\n" not in msg and str(tmp / "root") in msg
                continue
            # loaded: labels come only from the class folder the file is under (never via a link)
            assert s.x.shape == (len(s), 3, 8, 8) and set(np.unique(s.y)) == {0.0, 1.0}
            for path, y in zip(s.paths, s.y):
                cls = Path(path).relative_to(tmp / "root").parts[1].lower()
                assert cls == ("fake" if y == 1 else "real")
    finally:
        shutil.rmtree(tmp)
