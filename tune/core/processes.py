"""Every process a command starts ends with it: on success, on Ctrl-C or SIGTERM, and when it is killed.

Three mechanisms, from the outside in:
- **A marker and a reaper.** `python -m tune` puts a marker unique to this command into its environment before
  anything starts, so every process it starts inherits it, those Ray daemonises included (parent links miss
  them). A small reaper process waits on a pipe from the command; when the pipe closes (the command exited,
  however: even SIGKILL closes it) the reaper ends every process that still carries the marker.
- **Workers that watch their parent.** A worker (`guard_worker`, finalize's retrainings) asks Linux to kill it
  when its parent dies (PR_SET_PDEATHSIG) and also polls its parent id, so it never trains on for nobody.
- **Interrupts that mean stop.** `stop_on_signals` turns the first SIGINT or SIGTERM into `Interrupted`, which
  unwinds the command through its `finally` blocks (a worker pool is terminated there, `worker_pool`).

Standard library only: this file also runs as the reaper script (`python processes.py MARK`).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from types import FrameType

MARK = "TUNE_PROCESS_MARK"
REAP_GRACE_S = 2.0  # SIGTERM to SIGKILL for what the reaper finds


class Interrupted(KeyboardInterrupt):
    """The command was asked to stop (SIGINT or SIGTERM). A KeyboardInterrupt, so it unwinds like Ctrl-C does;
    `code` is the shell's exit status for it (128 + the signal: 130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.code = 128 + signum


def exit_code(e: KeyboardInterrupt) -> int:
    return e.code if isinstance(e, Interrupted) else 128 + signal.SIGINT


# --------------------------------------------------------------------------- the marker and the reaper
_owned: list[str] = []  # the mark of this command's own_descendants, while it runs
_reapers: list[subprocess.Popen[bytes]] = []  # its reaper, until finish()


def process_mark() -> str:
    """The marker of the processes this command starts: own_descendants' (the reaper watches it), or, when this
    code runs inside another program (a test calling the CLI), a fresh one put into the environment now."""
    if _owned:
        return _owned[-1]
    mark = uuid.uuid4().hex
    os.environ[MARK] = mark
    return mark


def marked_pids(mark: str) -> list[int]:
    """PIDs of the processes, other than this one, whose environment carries `mark` (Linux's /proc; elsewhere
    none are found)."""
    needle = f"{MARK}={mark}".encode()
    out = []
    for d in Path("/proc").glob("[0-9]*"):
        if int(d.name) == os.getpid():
            continue
        try:
            if needle in (d / "environ").read_bytes().split(b"\0"):
                out.append(int(d.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return out


def end_processes(mark: str, grace_s: float) -> tuple[int, int]:
    """SIGTERM every marked process, SIGKILL those still there after `grace_s` (Ray's agents can ignore SIGTERM).
    Returns (how many got SIGTERM, how many needed SIGKILL)."""
    return end_pids(lambda: marked_pids(mark), grace_s)


def end_pids(find: Callable[[], list[int]], grace_s: float) -> tuple[int, int]:
    """SIGTERM the processes `find` names, SIGKILL those it still names after `grace_s`."""
    counts = []
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 0.5)):
        pids = find()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        counts.append(len(pids))
        deadline = time.monotonic() + wait_s
        while pids and find() and time.monotonic() < deadline:
            time.sleep(0.05)
    return counts[0], counts[1]


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) from /proc/PID/stat, None when it is gone (or not Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[1]), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def descendants(root: int) -> dict[int, int]:
    """Every live descendant of `root`: pid -> its start time (so a reused pid is never taken for it)."""
    children: dict[int, list[tuple[int, int]]] = {}
    for d in Path("/proc").glob("[0-9]*"):
        st = _stat(int(d.name))
        if st is not None:
            children.setdefault(st[0], []).append((int(d.name), st[1]))
    out, todo = {}, [root]
    while todo:
        for pid, started in children.get(todo.pop(), []):
            if pid not in out:
                out[pid] = started
                todo.append(pid)
    return out


@contextlib.contextmanager
def own_descendants() -> Iterator[str]:
    """Mark this process's environment and start the reaper; yields the mark. When this process exits, or is
    killed, whatever it started and left running is ended. Every command has a mark and a reaper of its own: one
    inherited from a parent is replaced (the parent's reaper still ends this process, and this one's reaper, which
    carries no mark, ends what this process started)."""
    mark = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k != MARK}  # the reaper itself is not marked
    reaper = subprocess.Popen([sys.executable, "-S", __file__, mark], stdin=subprocess.PIPE, env=env,
                              stdout=subprocess.DEVNULL, start_new_session=True)
    os.environ[MARK] = mark
    _owned.append(mark)
    _reapers.append(reaper)
    try:
        yield mark
    finally:
        _owned.pop()
        os.environ.pop(MARK, None)
        finish()


def finish() -> None:
    """Let the reaper end what is left now and wait for it, so nothing outlives this command, the reaper included.
    own_descendants does this on the way out; call it before os._exit, which skips that."""
    while _reapers:
        reaper = _reapers.pop()
        if reaper.stdin:
            reaper.stdin.close()  # the reaper's signal; the kernel closes it too if this process is killed
        with contextlib.suppress(subprocess.TimeoutExpired, KeyboardInterrupt):
            reaper.wait(REAP_GRACE_S + 3)


def reap(mark: str) -> None:
    """The reaper: until the command's pipe closes, note the command's descendants every second; then end every
    one still alive, and every process still carrying its mark. Both, because neither alone finds all: Ray
    daemonises some processes (no parent link back), and some rewrite their title over their environment."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C meant for the command must not end its reaper
    command, me, fd = os.getppid(), os.getpid(), sys.stdin.fileno()
    seen: dict[int, int] = {}
    while True:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready and not os.read(fd, 1 << 16):
            break
        seen.update(descendants(command))
    seen.pop(me, None)

    def left() -> list[int]:
        alive = [pid for pid, started in seen.items() if (st := _stat(pid)) is not None and st[1] == started]
        return sorted(set(alive) | set(marked_pids(mark)) - {me})

    deadline = time.monotonic() + 1.0  # processes that are ending on their own (Ray's workers) get a moment
    while left() and time.monotonic() < deadline:
        time.sleep(0.1)
    end_pids(left, REAP_GRACE_S)


# --------------------------------------------------------------------------- workers
PR_SET_PDEATHSIG = 1


def guard_worker(parent: int) -> None:
    """In a worker process: die with `parent`, and leave Ctrl-C to it (it terminates its workers).

    PR_SET_PDEATHSIG kills this process when the thread that started it exits (Linux only); the watcher thread
    covers the rest (another OS, or a parent whose other thread started the worker)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="watch-parent").start()


@contextlib.contextmanager
def worker_pool(jobs: int) -> Iterator[ProcessPoolExecutor]:
    """A pool of `jobs` spawned workers (spawn, not fork: forking a process whose OpenMP threads already ran can
    deadlock) that die with this process. Leaving the block by an exception (an interrupt, a failed job) cancels
    what has not started and kills the workers at once, instead of waiting for their trainings to end."""
    pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=guard_worker,
                               initargs=(os.getpid(),))
    try:
        yield pool
    except BaseException:
        workers = list(getattr(pool, "_processes", None) or {})  # the executor's pid -> process map
        pool.shutdown(wait=False, cancel_futures=True)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        raise
    pool.shutdown(wait=True)


# --------------------------------------------------------------------------- interrupts
Handler = Callable[[int, FrameType | None], None]


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def stop_on_signals(first: Handler = _raise) -> Iterator[list[int]]:
    """Inside the block the first SIGINT or SIGTERM calls `first` (by default: raise Interrupted) and any later
    one raises Interrupted; yields the list of signals received. The previous handlers come back after."""
    received: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        (first if len(received) == 1 else _raise)(signum, frame)

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, handler)
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


if __name__ == "__main__":
    reap(sys.argv[1])
