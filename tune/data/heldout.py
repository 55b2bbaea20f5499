"""Held-out validation sources: generators a search validates on every epoch but never trains on.

`search --valid-extra DIR [DIR ...]` (or `valid_extra:` in the space file) and `train --valid-extra`
name them. Each DIR is a source in evaluate's layouts (tune/data/sources.py: Fake/Real, 0_real/1_fake, or a
parent of one folder per generator). They are decoded once and cached like valid (tune/data/images.py),
fingerprinted, and handed to tune.training.loop.fit, which scores them every epoch in inference mode through
the frozen-prefix cache (tune/training/cache.py) and reports xval_* numbers
(declared in tune/metrics/classification.py).

Honesty is checked by content: a held-out source may share no image with train, valid or test, and a
source that selected (valid, a held-out one) is never reported as a test result (`finalize
--extra-test`). Two images are the same when their files are byte-identical (SHA-256); only files of
equal size are hashed, so the check costs a stat per file plus a few hashes. The test split is only
listed and compared this way, never decoded: nothing else of it reaches the search.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from tune.core import UserError
from tune.data.images import SPLIT_NAMES, DataError, ImageSet, SplitFiles, file_digest, load_files, scan_split
from tune.data.sources import Source, find_sources

ROLE = "held-out validation source"


def column_name(source: Source) -> str:
    """The source's name in xval[NAME]_auc: its folder name, with its parent's in front when the folder is
    named like a split (demo-data's gen1/valid becomes gen1-valid), in letters, digits, '.', '_' and '-'."""
    name = source.name
    if name.lower() in {n for names in SPLIT_NAMES.values() for n in names}:
        name = f"{source.path.absolute().parent.name}-{name}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "source"


def find(dirs: list[Path]) -> list[Source]:
    """The held-out sources under `dirs`; one class only or no images at all is one clear line."""
    sources = find_sources(dirs)
    names: list[str] = []
    for s in sources:
        missing = [cls for cls, n in (("Fake", s.n_fake), ("Real", s.n_real)) if not n]
        if missing:
            raise UserError(f"{ROLE} {s.path} has no {missing[0]} images (expected both classes: its AUC would be "
                            "undefined)")
        name, k = column_name(s), 2
        while name in names:  # find_sources' names are unique; made plain, two may meet
            name, k = f"{column_name(s)}-{k}", k + 1
        s.name = name
        names.append(name)
    return sources


def load(sources: list[Source], size: int, *, cache_dir: Path | None = None, skip_bad: bool = False,
         live: bool = False, resize: str = "bilinear") -> list[ImageSet]:
    """Decode each source once (cached by fingerprint, like a split); both classes must stay readable."""
    return [load_files(SplitFiles(s.name, s.files, s.labels, 0, s.path), size, label=f"{ROLE} {s.path}",
                       skip_bad=skip_bad, cache_dir=cache_dir, live=live, resize=resize) for s in sources]


def record_sources(dirs: list[Path], sets: list[ImageSet], sources: list[Source]) -> dict[str, Any]:
    """What run.json and record.json keep: the folders as given, and each source's content hash."""
    return {"dirs": [str(Path(d).absolute()) for d in dirs],
            "sources": [{"name": s.split, "path": str(src.path.absolute()), "fingerprint": s.fingerprint,
                         "n_fake": int(s.y.sum()), "n_real": int(len(s) - s.y.sum()), "skipped": s.skipped}
                        for s, src in zip(sets, sources)]}


def load_recorded(recorded: dict[str, Any] | None, size: int, *, what: str, dirs: list[Path] | None = None,
                  cache_dir: Path | None = None, skip_bad: bool = False, live: bool = False,
                  resize: str = "bilinear") -> list[ImageSet]:
    """The held-out sources a run or training recorded (record_sources()), refused when their content changed:
    its numbers and its choices cannot be reproduced on other images. None (an older run): none.

    `dirs` re-points them (--valid-extra after the folders moved): the same images, found by content wherever
    they are now, keep the names the run recorded (its xval[NAME]_ columns)."""
    if not recorded:
        if dirs:
            raise UserError(f"--valid-extra re-points the {ROLE}s a run recorded, and this one recorded none "
                            f"(since {what}); leave it out")
        return []
    sources = find([Path(d) for d in (dirs or recorded["dirs"])])
    sets = load(sources, size, cache_dir=cache_dir, skip_bad=skip_bad, live=live, resize=resize)
    was = {r["name"]: r["fingerprint"] for r in recorded["sources"]}
    if dirs:
        named = {fp: name for name, fp in was.items()}
        sets = [replace(s, split=named.get(s.fingerprint, s.split)) for s in sets]
    now = {s.split: s.fingerprint for s in sets}
    for name in sorted(set(was) | set(now)):
        if was.get(name) != now.get(name):
            where = f" in {', '.join(map(str, dirs))}" if dirs else ""
            raise UserError(f"the {ROLE} {name}{where} changed since {what} (fingerprint {was.get(name)} recorded, "
                            f"{now.get(name) or 'none there'} now); its numbers cannot be reproduced on different "
                            "images")
    return sets


def _sizes(paths: list[str]) -> dict[str, int]:
    return {p: os.stat(p).st_size for p in paths}


def shared(a: list[str], b: list[str]) -> list[tuple[str, str]]:
    """(file in a, file in b) pairs with identical bytes: only files whose size occurs on both sides are hashed."""
    sa, sb = _sizes(a), _sizes(b)
    both = set(sa.values()) & set(sb.values())
    ca, cb = [p for p in a if sa[p] in both], [p for p in b if sb[p] in both]
    with ThreadPoolExecutor(max_workers=4) as pool:
        da = dict(zip(ca, pool.map(file_digest, ca)))
        db = dict(zip(cb, pool.map(file_digest, cb)))
    first = {d: p for p, d in reversed(list(da.items()))}
    return [(first[d], p) for p, d in db.items() if d in first]


def check_apart(mine: dict[str, list[str]], others: dict[str, list[str]], *, why: str, among: bool = True) -> None:
    """Refuse, in one line, any image of a group in `mine` that is byte-identical to one of a group of `others`
    (e.g. a held-out source vs the valid split) or, with `among`, of another group of `mine`."""
    names = list(mine)
    pairs = [(m, o, others[o]) for m in names for o in others]
    pairs += [(m, o, mine[o]) for i, m in enumerate(names) for o in names[i + 1:]] if among else []
    for m, o, their in pairs:
        same = shared(mine[m], their)
        if same:
            a, b = same[0]
            raise UserError(f"{m} shares {len(same)} of its {len(mine[m])} image(s) with {o} (byte-identical "
                            f"files, e.g. {a} and {b}); {why}")


def files_of_test_split(root: Path) -> list[str]:
    """The test split's file paths (listed, never decoded), or none when the dataset has no test split."""
    try:
        return [str(p) for p in scan_split(root, "test").paths]
    except DataError:
        return []


def check_for_training(sets: list[ImageSet], train: ImageSet, valid: ImageSet, root: Path) -> None:
    """A held-out source shares no image with train, valid, test (when present) or another held-out source."""
    if not sets:
        return  # nothing to compare: the test split is not even listed
    splits = {"the train split": train.paths, "the valid split": valid.paths,
              "the test split": files_of_test_split(root)}
    check_apart({f"{ROLE} {s.split}": s.paths for s in sets}, {k: v for k, v in splits.items() if v},
                why="a held-out source must be images the model never trains on and the test never scores")


def for_training(dirs: list[Path], size: int, train: ImageSet, valid: ImageSet, root: Path, *,
                 recorded: dict[str, Any] | None = None, repoint: list[Path] | None = None, what: str = "",
                 cache_dir: Path | None = None, skip_bad: bool = False, live: bool = False,
                 resize: str = "bilinear") -> tuple[list[ImageSet], dict[str, Any] | None]:
    """(the held-out sets, their description for run.json or record.json) of a new search or training from
    `dirs`, or of one that goes on (`recorded`: refused if their content changed since `what`; `repoint`: the
    folders they are in now, when they moved); checked apart from train, valid and test."""
    if recorded is not None:
        sets = load_recorded(recorded, size, what=what, dirs=repoint, cache_dir=cache_dir, skip_bad=skip_bad,
                             live=live, resize=resize)
        description = record_sources(repoint, sets, find(repoint)) if repoint else recorded
    else:
        sources = find(dirs) if dirs else []
        sets = load(sources, size, cache_dir=cache_dir, skip_bad=skip_bad, live=live, resize=resize)
        description = record_sources(dirs, sets, sources) if sets else None
    check_for_training(sets, train, valid, root)
    return sets, description


def check_for_testing(test: ImageSet, extra_test: list[Source], train: ImageSet, valid: ImageSet,
                      held_out: list[ImageSet]) -> None:
    """finalize, before any training: the test split shares no image with a held-out source, and no extra test
    source (--extra-test) shares one with what trained or selected (train, valid, a held-out source)."""
    held = {f"{ROLE} {s.split}": s.paths for s in held_out}
    check_apart({"the test split": test.paths}, held, why="a source used to select is never a test result")
    check_apart({f"extra test source {s.name} ({s.path})": [str(f) for f in s.files] for s in extra_test},
                {"the train split": train.paths, "the valid split": valid.paths, **held},
                why="a source used to train or select (train, valid, a held-out validation source) is never "
                    "reported as a test result", among=False)
