"""Stopping `python -m tune serve` within a hard bound, on Ctrl-C or SIGTERM, also under load.

Why `serve.shutdown()` alone is not enough (benchmarks/serve_stop.py, docs/serving.md: Serving the winner,
Stopping): it asks Serve's controller to stop every replica, and a replica drains first. It keeps accepting
requests while it waits for its ongoing requests to reach zero, checked every 2 s, and is only killed after its
graceful timeout of 20 s. With clients on keep-alive connections that zero never comes, so such a stop takes
the whole 20 s, and over 30 s when the cores are busy (the controller's own 30 s wait then gives up).

So the stop goes in bounded steps:
1. the replica closes its listening socket (new connections are refused) and asks every open connection
   to close after its current answer, then waits up to DRAIN_S for them: requests in flight are answered;
2. `ray.shutdown()` of the local Ray this command started, in a thread given at most RAY_S. Serve's own
   graceful shutdown is skipped there: after step 1 it has nothing left to drain, and the Ray it runs on
   ends anyway;
3. whatever the command started and is still running is ended: SIGTERM, then SIGKILL after END_S. The
   processes are found by a marker in their environment (Ray daemonises some of them, so parent links
   miss them), which every process Ray starts for this command inherits;
4. a watchdog does step 3 and exits if all this has not finished within BUDGET_S.
On a cluster this command did not start (--address) nothing is killed: Serve is shut down and Ray
disconnected, within the same budget.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from tune.core.processes import end_processes, marked_pids, process_mark

BUDGET_S = 8.0  # the whole stop, from the signal to the exit
DRAIN_S = 3.0  # requests in flight get this long to be answered
RAY_S = 3.0  # ray.shutdown(); it takes ~1.5 s on 2 idle cores
END_S = 1.0  # SIGTERM to SIGKILL for processes still running after that
_received: list[tuple[str, float]] = []  # (signal name, monotonic time): the first says how the stop began


def mark_processes() -> str:
    """The marker of the processes this command starts, so the stop can end them (tune.core.processes)."""
    return process_mark()


def _again(signum: int, frame: object) -> None:
    """A second Ctrl-C (or SIGTERM) while stopping: say so once; the stop is bounded anyway."""
    name = signal.Signals(signum).name
    if len(_received) <= 1:
        print(f"{name}: already stopping (at most {BUDGET_S:g} s)", file=sys.stderr, flush=True)
    _received.append((name, time.monotonic()))


def interrupt(signum: int, frame: object) -> None:
    """SIGINT and SIGTERM handler while serving: start the stop (KeyboardInterrupt). From here on both
    signals only note themselves, so a second one cannot raise into the stop steps (a traceback, and
    Ray left running)."""
    signal.signal(signal.SIGINT, _again)
    signal.signal(signal.SIGTERM, _again)
    _received.append((signal.Signals(signum).name, time.monotonic()))
    raise KeyboardInterrupt


def arm() -> None:
    """Make SIGINT and SIGTERM start the stop; again after ray.init, which sets its own SIGTERM handler
    (sys.exit, skipping the stop's steps). Once a signal has come, they stay calm instead."""
    handler = _again if _received else interrupt
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def calm_signals() -> None:
    """For a stop that did not begin with a signal (an error): a signal meanwhile must not raise either."""
    signal.signal(signal.SIGINT, _again)
    signal.signal(signal.SIGTERM, _again)


def _bounded(fn: Callable[[], Any], timeout_s: float) -> tuple[bool, str]:
    """Run `fn` in a daemon thread for at most `timeout_s`: (finished, error text if it raised)."""
    failed: list[str] = []

    def body() -> None:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - reported in the stop line; the next step still runs
            failed.append(f"{type(e).__name__}: {str(e).strip().splitlines()[0][:120] if str(e).strip() else ''}")

    t = threading.Thread(target=body, daemon=True, name="stop-step")
    t.start()
    t.join(max(0.0, timeout_s))
    return not t.is_alive(), failed[0] if failed else ""


def stop(handle: Any, *, ray_started: bool, local: bool, mark: str | None) -> tuple[int, str]:
    """Stop serving (the steps in this module's docstring). `handle`: the app's DeploymentHandle, or None
    when the app never started; `ray_started`: this command called ray.init; `local`: and the Ray is its
    own, not a cluster's; `mark`: the processes' marker (mark_processes). Returns the exit code and one
    line saying how it stopped and how long it took, counted from the signal."""
    import ray  # heavy: ray only when serving stops (cli/serve imports this module at start-up)

    calm_signals()
    t0 = _received[0][1] if _received else time.monotonic()
    deadline = t0 + BUDGET_S

    def left() -> float:
        return deadline - time.monotonic()

    def watchdog() -> None:  # a step stuck past its own bound (a blocked C call): end it all from here
        ended = end_processes(mark, END_S) if local and mark else (0, 0)
        print(f"stopped{_how()} in {time.monotonic() - t0:.1f} s: forced after the {BUDGET_S:g} s bound "
              f"({ended[0]} process(es) ended)", flush=True)
        os._exit(1)

    dog = threading.Timer(max(0.1, left()), watchdog)
    dog.daemon = True
    dog.start()
    notes = []
    if handle is not None:
        t = time.monotonic()
        try:
            drained = handle.drain.remote(min(DRAIN_S, left() - 4.5)).result(
                timeout_s=max(0.1, min(DRAIN_S + 0.5, left() - 4.0)))
            notes.append(f"port closed, in-flight requests {'answered' if drained['open'] == 0 else 'cut'} "
                         f"({time.monotonic() - t:.1f} s)" if drained["closed"] else "no direct ingress to close")
        except Exception as e:  # noqa: BLE001 - a replica that is gone or stuck: the next steps end it
            notes.append(f"drain failed ({type(e).__name__}, {time.monotonic() - t:.1f} s)")
    t = time.monotonic()
    if local:
        done, error = _bounded(ray.shutdown, min(RAY_S, left() - END_S - 1.5))
    else:  # not our Ray: Serve's own graceful shutdown there, and disconnect if we connected; kill nothing there
        from ray import serve  # heavy: ray, as in stop

        done, error = _bounded(lambda: (serve.shutdown(), ray.shutdown() if ray_started else None), left() - 0.5)
    notes.append(f"Ray {'shut down' if done and not error else 'did not shut down'} ({time.monotonic() - t:.1f} s"
                 f"{', ' + error if error else ''})")
    code = 0
    if local and mark:
        # Ray's workers exit on their own once the raylet is gone; give them a moment before signalling.
        settle = min(deadline - END_S - 1.0, time.monotonic() + 1.0)
        while marked_pids(mark) and time.monotonic() < settle:
            time.sleep(0.05)
        termed, killed = end_processes(mark, min(END_S, left() - 1.0))
        if termed:
            notes.append(f"ended {termed} leftover process(es) ({killed} needed SIGKILL)")
        if marked_pids(mark):
            notes.append("some processes did not end")
            code = 1
    elif not done:
        code = 1
    if done:
        dog.cancel()
    # else it stays armed: the unfinished ray.shutdown() holds Ray's lock, and Ray's exit hook, which waits for
    # that lock, could otherwise keep this process from exiting past the bound.
    return code, f"stopped{_how()} in {time.monotonic() - t0:.1f} s: {'; '.join(notes)}"


def _how() -> str:
    return f" on {_received[0][0]}" if _received else ""


async def drain_direct_ingress(wait_s: float) -> dict[str, Any]:
    """In a replica: close its direct-ingress HTTP listener and wait up to `wait_s` for its connections.

    Ray Serve 2.60 keeps the replica's uvicorn server on its private `Replica` object, which the
    actor instance holds; uvicorn's `should_exit` makes it, within 0.1 s, close the listening socket
    (new connections are refused: a client sees that, never a 5xx), close idle keep-alive connections,
    and close busy ones after their current response. {"closed": False} if Serve's internals changed
    or the replica has no direct ingress (behind Serve's proxy)."""
    from ray._private import worker  # Ray's worker internals: only in a replica's process

    w = worker.global_worker
    actor = getattr(w, "actors", {}).get(getattr(w, "actor_id", None))
    server = getattr(getattr(actor, "_replica_impl", None), "_direct_ingress_http_server", None)
    state = getattr(server, "server_state", None)
    if server is None or state is None:
        return {"closed": False, "open": None}
    server.should_exit = True
    deadline = time.monotonic() + max(0.0, wait_s)
    await asyncio.sleep(0.15)  # uvicorn looks at should_exit every 0.1 s
    while state.connections and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return {"closed": True, "open": len(state.connections)}
