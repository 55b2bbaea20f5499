"""Batches prepared ahead of the training step by a few threads, so the step never waits for pixels.

A batch's host part (reading uint8 pixels or stored features from a memory map, augmenting with PIL,
mirroring) runs on worker threads: numpy, PIL and torch release the GIL, and the arrays are memory maps,
so threads share them where processes would each copy them. Its device part (the copy, uint8 → float,
the frozen prefix) runs in the training thread (tune/training/cache.py `Inputs.on_device`).

Reproducibility: a worker only computes a pure function of what the training thread hands it (image
indices, the flips already drawn, the epoch's view). Every random draw stays in the training thread,
in the order the inline loop always drew it, so the batches, and every number of a CPU run, are the same
with 0, 1 or 8 workers (tests/test_loader.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

T = TypeVar("T")


@dataclass
class HostBatch:
    """What a worker hands the training thread: `x` is uint8 pixels (B, 3, S, S) still to be encoded, or
    float32 features of the frozen prefix. On CUDA the crop/jitter augmentation (`draws`, per image) and
    then the flips (`flip`) are still to be applied, on the device; on the CPU both are done already."""

    x: torch.Tensor
    draws: np.ndarray | None = None
    flip: torch.Tensor | None = None


def loader_workers(requested: int, threads: int, device: torch.device) -> int:
    """Worker threads for a trial. `requested` >= 0 is taken as is (0: inline, the training thread prepares
    each batch when it needs it). Otherwise (-1, auto): on CUDA one per CPU
    of the trial, as the CPU's only job is feeding the GPU; on the CPU half of them, because the step's own
    torch threads need the cores too, and none for a one-thread trial (a search's default), which a worker
    slowed (0.90x: docs/speed.md, "Input pipeline and mixed precision")."""
    if requested >= 0:
        return requested
    threads = threads or torch.get_num_threads()
    return max(1, threads) if device.type == "cuda" else threads // 2


def pinned(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Page-locked when bound for CUDA, so that the copy can be asynchronous (`non_blocking=True`)."""
    return t.pin_memory() if device.type == "cuda" else t


def prefetched(jobs: Iterable[Callable[[], T]], workers: int) -> Iterator[T]:
    """The jobs' results in order, computed up to `workers + 2` ahead on `workers` threads (0: inline).

    Bounded: at most workers + 2 batches exist beyond the one in use (each worker busy, one or two ready),
    so memory is a few batches whatever the epoch's length. Stopping early (an exception in the step, a
    generator closed) cancels what has not started and waits for what has."""
    if workers <= 0:
        for job in jobs:
            yield job()
        return
    todo = iter(jobs)
    pending: deque[Future[T]] = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="tune-loader") as pool:
        try:
            for job in todo:
                pending.append(pool.submit(job))
                if len(pending) >= workers + 2:
                    break
            while pending:
                out = pending.popleft().result()
                job = next(todo, None)
                if job is not None:
                    pending.append(pool.submit(job))
                yield out
        finally:
            for f in pending:
                f.cancel()
