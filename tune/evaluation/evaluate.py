"""`python -m tune evaluate`: any trained detector, per source (generator) and per perturbation.

    python -m tune evaluate --model PATH [--model PATH ...] | --run RUN  DATA [DATA ...]
                            [--perturb jpeg=95,75,50 blur=1,2 resize=0.5,0.25] [--out DIR]
                            [--skip-bad-images] [--resamples N] [--seed S]

One row per (model, source, condition) plus a mean-over-sources row: n fake/real, AUC, AP, EER,
and accuracy/precision/recall/F1 at the model's valid-chosen threshold and at 0.5, each with a
95% stratified bootstrap interval; with several models, a paired bootstrap per source and overall.
Written to evaluation.{md,csv,json} (+ scores.csv, plots/) in --out by tune/cli/evaluate.py; nothing is
written when an input is bad. Each image is decoded once: every condition and every model size derives from it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tune.core import UserError
from tune.data.images import decode_rgb
from tune.data.perturb import Condition, model_input, native
from tune.data.sources import Scored, Source
from tune.evaluation.on_cluster import score_chunks
from tune.evaluation.panels import evaluation_panels
from tune.evaluation.statistics import evaluation_statistics
from tune.evaluation.video_scores import FileScores, needs_crops, score_file
from tune.inference import load
from tune.runs.files import Evaluation

if TYPE_CHECKING:  # names used only in annotations

    from tune.evaluation.panels import Panel
    from tune.inference import LoadedModel

Log = Callable[[str], None]
CHUNK = 128  # images decoded (and perturbed) at a time: memory stays at 2 CHUNKs x conditions x model sizes
BATCH = 64


# --------------------------------------------------------------------------- scoring
def model_names(models: list[LoadedModel]) -> list[str]:
    """models/ARCH.pth → ARCH; DIR/best.pth → DIR (finalize/NAME/seedS → NAME-seedS); repeats numbered."""
    out: list[str] = []
    for m in models:
        p = Path(m.path).absolute()
        name = p.stem
        if name == "best":
            name = p.parent.name if not p.parent.name.startswith("seed") else f"{p.parent.parent.name}-{p.parent.name}"
        out.append(name if name not in out else f"{name}#{len(out) + 1}")
    return out


def _prepare(pool: ThreadPoolExecutor, files: list[Path], conditions: list[Condition],
             sizes: list[tuple[int, str]]) -> tuple[list[int], dict, dict[int, str]]:
    """Decode each file once at its native size; every (condition, model size) input comes from that decode.

    Returns the positions of the readable files, their inputs per (condition, (size, resize mode)), and why each
    other failed."""
    def one(f: Path) -> dict[tuple[str, tuple[int, str]], np.ndarray] | str:
        try:
            im = decode_rgb(f)
        except (ValueError, OSError) as e:
            return str(e) if isinstance(e, ValueError) else f"cannot open: {e.strerror or e}"
        out = {}
        for c in conditions:
            base = native(im, c)
            for s in sizes:
                try:
                    out[c.name, s] = model_input(base, c, *s)
                except ValueError as e:  # smaller than a resize-crop model's crop
                    return str(e)
        return out

    done = list(pool.map(one, files))
    good = [i for i, d in enumerate(done) if not isinstance(d, str)]
    bad = {i: d for i, d in enumerate(done) if isinstance(d, str)}
    x = {key: np.stack([done[i][key] for i in good]) for key in (done[good[0]] if good else {})}  # type: ignore[index]
    return good, x, bad


def _prepared(chunks: list[list[Path]], conditions: list[Condition],
              sizes: list[tuple[int, str]]) -> Iterator[Any]:
    """Each chunk prepared, in order; the next one is decoded while the models score this one (PIL's decode
    and resize release the GIL), so the forward rarely waits."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool, ThreadPoolExecutor(max_workers=1) as ahead:
        nxt = ahead.submit(_prepare, pool, chunks[0], conditions, sizes) if chunks else None
        for k in range(len(chunks)):
            assert nxt is not None
            current = nxt.result()
            if k + 1 < len(chunks):
                nxt = ahead.submit(_prepare, pool, chunks[k + 1], conditions, sizes)
            yield current


Chunk = tuple[list[int], dict[tuple[str, str], np.ndarray], dict[int, str]]  # positions, probabilities, failures


def _scored(chunks: list[list[Path]], models: dict[str, LoadedModel], conditions: list[Condition]) -> Iterator[Chunk]:
    """Each chunk scored here: its readable positions, each (model, condition)'s probabilities, why others failed."""
    sizes = sorted({(m.image_size, m.resize) for m in models.values()})
    for good, x, bad in _prepared(chunks, conditions, sizes):
        yield good, ({(name, c.name): m.probabilities(x[c.name, (m.image_size, m.resize)], batch=BATCH)
                      for name, m in models.items() for c in conditions} if good else {}), bad


def score_all(sources: list[Source], models: dict[str, LoadedModel], conditions: list[Condition], *,
              skip_bad: bool, log: Log, cluster: bool = False) -> dict[str, Scored]:
    """Score every source; unreadable images are refused (all listed in one line) unless skip_bad.

    All sources' files form one list cut into chunks, so batches stay full across source boundaries. `cluster`:
    each chunk is a Ray task on the cluster joined (tune.evaluation.on_cluster), the same batches, so the same
    numbers; videos (scored one file at a time) stay here."""
    t0 = time.perf_counter()
    files = [f for s in sources for f in s.files]
    p = {(n, c.name): np.full(len(files), np.nan) for n in models for c in conditions}
    why: dict[int, str] = {}
    plain = [i for i, f in enumerate(files) if not needs_crops(f, models)]  # videos: scored one at a time below
    chunks = [[files[i] for i in plain[k:k + CHUNK]] for k in range(0, len(plain), CHUNK)]
    if cluster:
        log(f"scoring {len(chunks)} chunk(s) of up to {CHUNK} images as Ray tasks on the cluster")
    scored = score_chunks(models, chunks, conditions, BATCH, _prepare) if cluster else \
        _scored(chunks, models, conditions)
    for k, (good, probs, bad) in enumerate(scored):
        at = plain[k * CHUNK:(k + 1) * CHUNK]
        why.update({at[i]: reason for i, reason in bad.items()})
        if not good:
            continue
        rows = np.asarray([at[i] for i in good])
        for key, v in probs.items():
            p[key][rows] = v
    cropped = {}
    for i in sorted(set(range(len(files))) - set(plain)):
        try:
            cropped[i] = score_file(files[i], models, conditions)
        except (ValueError, OSError) as e:
            why[i] = str(e) if isinstance(e, ValueError) else f"cannot open: {e.strerror or e}"
            continue
        for key, v in cropped[i].p.items():
            p[key][i] = v
    out, start = {}, 0
    for s in sources:
        keep = [i for i in range(len(s.files)) if start + i not in why]
        rows = start + np.asarray(keep, dtype=int)
        out[s.name] = Scored(np.asarray([s.labels[i] for i in keep], dtype=int), [str(s.files[i]) for i in keep],
                             {key: v[rows] for key, v in p.items()},
                             [(str(s.files[i]), why[start + i]) for i in range(len(s.files)) if start + i in why],
                             frame_level([(s.labels[i], cropped.get(start + i)) for i in keep]))
        start += len(s.files)
    log(f"scored {len(files) - len(why)} image(s) in {len(sources)} source(s) x {len(models)} model(s) x "
        f"{len(conditions)} condition(s) in {time.perf_counter() - t0:.1f}s")
    bad = [(p, why) for sc in out.values() for p, why in sc.bad]
    if bad and not skip_bad:
        listing = "; ".join(f"{p} ({why})" for p, why in bad[:20]) + (f"; and {len(bad) - 20} more" if len(bad) > 20
                                                                         else "")
        raise UserError(f"{len(bad)} unreadable image(s): {listing} (expected readable jpg/jpeg/png/bmp/webp; "
                        "--skip-bad-images skips them and counts them in the output)")
    for s in sources:
        if len(out[s.name].y) == 0:
            raise UserError(f"no readable images in source {s.name} ({s.path})")
    return out


def frame_level(files: list[tuple[int, FileScores | None]]) -> Scored | None:
    """A source's videos' frames as one Scored (a row per frame), or None when it has no video scored by frame."""
    videos = [(label, f) for label, f in files if f is not None and f.frames]
    if not videos:
        return None
    keys = list(videos[0][1].frame_p)
    return Scored(np.asarray([label for label, f in videos for _ in f.frames], dtype=int),
                  [path for _, f in videos for path in f.frames],
                  {k: np.concatenate([f.frame_p[k] for _, f in videos]) for k in keys})


# --------------------------------------------------------------------------- the command
@dataclass
class Evaluated:
    """What an evaluation found: the numbers evaluation.json holds, every image's scores, the Grad-CAM panels."""

    result: Evaluation
    scored: dict[str, Scored]
    panels: dict[str, Panel]  # plot name -> panel


def evaluate(models: list[LoadedModel], sources: list[Source], conditions: list[Condition], *,
             skip_bad: bool = False, resamples: int = 1000, seed: int = 0, log: Log = print,
             cluster: bool = False) -> Evaluated:
    """Score, compute the tables' numbers and each model's Grad-CAM panel (on the clean images: parse_perturb's
    first condition). Every input problem is raised here, before anything is written (tune/cli/evaluate.py
    writes the folder)."""
    named = dict(zip(model_names(models), models))
    scored = score_all(sources, named, conditions, skip_bad=skip_bad, log=log, cluster=cluster)
    result = evaluation_statistics(named, sources, conditions, scored, resamples=resamples, seed=seed)
    framed = [s for s in sources if scored[s.name].frames is not None]
    if framed:  # both levels: the videos above, their frames here (each with its own mean over sources)
        frames = {s.name: scored[s.name].frames for s in framed}
        result.frames = evaluation_statistics(named, framed, conditions, frames,  # type: ignore[arg-type]
                                              resamples=resamples, seed=seed)
    return Evaluated(result, scored, evaluation_panels(named, scored, conditions[0].name))


def load_models(paths: list[Path]) -> list[LoadedModel]:
    return [load(p) for p in paths]
