"""Stop a running `python -m tune serve` with a signal while clients post images and other processes keep
every core busy; shared by tests/test_serve.py and benchmarks/serve_stop.py.

Everything here is bounded: the CPU burners end themselves after `seconds` (and are killed by PID at
the end), the clients stop when told to, and a stop that takes too long is reported, not waited for.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from procs import pids_with_mark

BURN = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"


class Burners:
    """One busy-looping Python process per core, each ending itself after `seconds` at the latest."""

    def __init__(self, seconds: float = 60.0, n: int | None = None) -> None:
        self.procs = [subprocess.Popen([sys.executable, "-c", BURN.format(seconds=seconds)])
                      for _ in range(n or os.cpu_count() or 1)]

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()

    def __enter__(self) -> Burners:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Load:
    """`clients` threads, each posting `body` as /predict on a keep-alive connection, over and over, until
    stop(). Answers and connection errors are counted separately by whether the request began before or after
    `mark_signal()`."""

    port: int
    body: bytes
    clients: int = 4
    statuses: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    signalled_at: float | None = None

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(self.clients)]

    def start(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def mark_signal(self) -> None:
        self.signalled_at = time.monotonic()

    def _phase(self) -> str:
        return "before" if self.signalled_at is None else "after"

    def _client(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            phase = self._phase()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                conn.request("POST", "/predict", body=self.body, headers={"Content-Type": "image/png"})
                r = conn.getresponse()
                r.read()
                with self._lock:
                    self.statuses[f"{phase} {r.status}"] += 1
                if r.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                with self._lock:
                    self.errors[f"{phase} {type(e).__name__}"] += 1
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.05)  # a refused connection returns at once: do not spin
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(35)

    def wait_answered(self, n: int = 1, timeout: float = 60.0) -> None:
        """Until `n` requests have been answered (the server is serving, not still warming up its model on
        busy cores), at most `timeout` seconds; then the test's own assertions say what happened."""
        deadline = time.monotonic() + timeout
        while sum(self.statuses.values()) < n and time.monotonic() < deadline:
            time.sleep(0.05)

    def count(self, phase: str, *, errors: bool = False) -> int:
        source = self.errors if errors else self.statuses
        return sum(n for k, n in source.items() if k.startswith(phase + " "))

    def server_errors(self) -> int:
        return sum(n for k, n in self.statuses.items() if int(k.split()[1]) >= 500)


@dataclass
class Stopped:
    seconds: float  # from the signal to the server's exit (or to the timeout)
    returncode: int | None  # None: still running at the timeout
    left_at_exit: list[int]  # PIDs carrying the server's mark when it exited
    gone_after: float | None  # seconds from the signal until no marked process was left (None: not within wait)


def stop_server(proc: subprocess.Popen[str], mark: str, sig: signal.Signals, *, timeout: float = 60.0,
                linger: float = 30.0, load: Load | None = None) -> Stopped:
    """Send `sig` to the server, time its exit, then watch its processes for up to `linger` more seconds."""
    t0 = time.monotonic()
    if load is not None:
        load.mark_signal()
    proc.send_signal(sig)
    try:
        code: int | None = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        code = None
    seconds = time.monotonic() - t0
    left = pids_with_mark(mark)
    for pid in left:  # say what was left, while it is there to be named
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:160]
        except OSError:
            cmd = "?"
        print(f"left at exit: {pid} {cmd}", flush=True)
    deadline = time.monotonic() + linger
    while pids_with_mark(mark) and time.monotonic() < deadline:
        time.sleep(0.1)
    gone = None if pids_with_mark(mark) else time.monotonic() - t0
    return Stopped(seconds, code, left, gone)
