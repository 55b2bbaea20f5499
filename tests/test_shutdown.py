"""tune/serving/shutdown.py without Ray: the last-resort ending of marked processes, and the signal handling."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tune.core.processes import MARK
from tune.serving import shutdown

# Ignores SIGTERM, as Ray's agents can; says when it is ready, then sleeps at most 60 s.
STUBBORN = ("import signal, sys, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\n"
            "time.sleep(60)\n")


def test_end_processes_ends_marked_ones_only_and_kills_those_ignoring_sigterm(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MARK, raising=False)
    mark = shutdown.mark_processes()
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
             for code in (STUBBORN, "import time\nprint('ready', flush=True)\ntime.sleep(60)\n")]
    monkeypatch.delenv(MARK)
    other = subprocess.Popen([sys.executable, "-c", "import time\nprint('ready', flush=True)\ntime.sleep(60)\n"],
                             stdout=subprocess.PIPE, text=True)  # started without the mark: left alone
    try:
        for p in [*procs, other]:
            assert p.stdout is not None and p.stdout.readline() == "ready\n"
        assert sorted(shutdown.marked_pids(mark)) == sorted(p.pid for p in procs)
        t0 = time.monotonic()
        assert shutdown.end_processes(mark, grace_s=0.5) == (2, 1)  # the stubborn one needed SIGKILL
        assert time.monotonic() - t0 < 3
        assert [p.wait(5) for p in procs] == [-signal.SIGKILL, -signal.SIGTERM]
        assert shutdown.marked_pids(mark) == [] and other.poll() is None
    finally:
        for p in [*procs, other]:
            if p.poll() is None:
                p.kill()
            p.wait()


def test_a_second_signal_while_stopping_raises_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    shutdown._received.clear()
    try:
        with pytest.raises(KeyboardInterrupt):
            shutdown.interrupt(signal.SIGTERM, None)  # the first: starts the stop
        os.kill(os.getpid(), signal.SIGINT)  # the second, for real: noted, not raised
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        assert [name for name, _ in shutdown._received] == ["SIGTERM", "SIGINT", "SIGTERM"]
        assert capsys.readouterr().err.count("already stopping") == 1
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
        shutdown._received.clear()
