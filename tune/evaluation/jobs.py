"""How many finalize retrainings run at once: the CPU slots, capped by the memory they need.

Each job is a spawned process that retrains one (model, seed) at the trials' thread count. Decoded images
mapped from the cache cost a job nothing of its own (pages are shared through the page cache, and the job
is sent their path); images held in memory (a search run with --no-cache) are sent pickled, a copy per job.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tune.runs.info import read_run

if TYPE_CHECKING:
    from tune.data.images import ImageSet

# A job's private memory beside the images it is sent: torch, the model, its optimizer, activations and
# batches. Measured by benchmarks/scale.py (EfficientNet-Lite0 at 224 px, unfrozen 5..13, batch 32, the
# glibc settings that keep freed memory): 2.7-2.9 GB RssAnon per job, flat from 1k to 4k images.
JOB_GB = 3.0


def finalize_jobs(run_dir: Path) -> int:
    """As many retrainings at once as the machine has CPU slots for at the trials' CPUs per trial."""
    return max(1, (os.cpu_count() or 1) // read_run(run_dir).threads)


def available_bytes() -> int:
    """Memory the kernel says can be given to new work without swapping (MemAvailable)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def sent_bytes(sets: Iterable[ImageSet]) -> int:
    """Bytes of images a job receives as a copy: arrays held in memory (mapped or live images go as a path)."""
    return sum(s.x.nbytes for s in sets if isinstance(s.x, np.ndarray) and not isinstance(s.x, np.memmap))


def capped_jobs(slots: int, pending: int, sets: Iterable[ImageSet], log: Callable[[str], None]) -> int:
    """min(slots, what memory has room for, the retrainings left); says which one set the number."""
    per_job = JOB_GB * 1e9 + sent_bytes(sets)
    free = available_bytes()
    room = max(1, int(free // per_job))
    jobs = max(1, min(slots, room, pending))
    why = ("the retrainings left" if jobs == pending and pending < min(slots, room) else
           "memory" if room < slots else "CPU slots")
    log(f"finalize: {jobs} retraining(s) at once, set by {why} (CPU slots {slots}; memory room for {room}: "
        f"{free / 1e9:.1f} GB available / {per_job / 1e9:.1f} GB per job; {pending} left)")
    return jobs
