"""`python -m tune serve --model PATH | --run RUN --arch ARCH [--host 127.0.0.1] [--port 8000] ...`

Serves a trained detector over HTTP on Ray Serve (the API is in tune/serving/app.py): a local,
loopback-only Ray without a dashboard unless `--address` names an existing cluster. Prints the
URL once the model answers, and shuts Serve and the Ray it started down on Ctrl-C (or SIGTERM).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from tune.core import UserError
from tune.evaluation.picking import picked_dir
from tune.runs.layout import Run, resolve_run, results_root
from tune.training.records import WEIGHTS


@dataclass(frozen=True, kw_only=True)
class ModelChoice:
    """Which model serve and export use: a model file, or a run's (its picked model, or with `arch` its
    finalized model of that architecture); `storage` holds the run folders (None: results/)."""
    model: Path | None = None
    run: str | None = None
    arch: str | None = None
    storage: str | None = None


@dataclass(frozen=True, kw_only=True)
class ServeOptions:
    """How `serve` listens and batches (the flags of the same names; their defaults are the command line's)."""
    host: str
    port: int
    replicas: int
    threads: int  # torch threads per replica; 0: the CPUs shared among the replicas
    max_batch: int
    batch_wait_ms: float
    max_bytes: int
    max_video_s: float
    address: str | None  # an existing Ray cluster to deploy on; None: a local, loopback-only Ray


def model_path(choice: ModelChoice) -> Path:
    """--model as given, the winner `--run RUN --arch ARCH` exported by finalize (RUN/models/ARCH.pth), or with
    --run alone the model finalize --pick shipped (RUN/models/picked/best.pth)."""
    if choice.model:
        return Path(choice.model)
    if not choice.run:
        raise UserError("say which model: --model PATH, --run RUN (the picked model) or --run RUN --arch ARCH")

    run = Run(resolve_run(choice.run, results_root(choice.storage)))
    if choice.arch:
        return run.model(choice.arch)

    path = picked_dir(run) / WEIGHTS
    if not path.is_file():
        raise UserError(f"run {run.name} has no picked model ({path}): run finalize (it ships one), or give --arch")
    return path


def tcp_socket(host: str) -> socket.socket:
    return socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)


def lingering(port: int) -> bool:
    """Whether closed connections on `port` are still in TIME_WAIT (Linux's /proc; False elsewhere)."""
    rows = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows += Path(table).read_text().splitlines()[1:]
        except OSError:
            pass
    # Columns: sl local_address rem_address st ...; addresses are HEX_IP:HEX_PORT, state 06 is TIME_WAIT.
    return any(f[3] == "06" and int(f[1].rsplit(":", 1)[1], 16) == port for f in (r.split() for r in rows))


def check_options(a: ServeOptions) -> None:
    for flag, value in (("--port", a.port), ("--replicas", a.replicas), ("--max-batch", a.max_batch),
                        ("--max-bytes", a.max_bytes)):
        if value < 1:
            raise UserError(f"{flag} must be >= 1, got {value}")
    if a.port > 65535:
        raise UserError(f"--port must be <= 65535, got {a.port}")
    if a.max_video_s <= 0:
        raise UserError(f"--max-video-s must be > 0, got {a.max_video_s}")
    if a.batch_wait_ms < 0:
        raise UserError(f"--batch-wait-ms must be >= 0, got {a.batch_wait_ms}")
    if not a.address:  # a remote cluster's head binds the port, not this machine
        with tcp_socket(a.host) as s:
            try:
                s.bind((a.host, a.port))
            except OSError as e:
                why = ("connections of a server stopped a moment ago are closing (TIME_WAIT); the port is free "
                       "again within a minute" if lingering(a.port) else "is another server on that port?")
                raise UserError(f"cannot listen on {a.host}:{a.port}: {e.strerror or e} ({why} "
                                "or choose another --port)") from None


def free_port(host: str) -> int:
    with tcp_socket(host) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def direct_ingress(a: ServeOptions) -> bool:
    """One replica on a Ray this command starts: let the replica answer HTTP on --port itself (Ray Serve's
    direct ingress, part of its RAY_SERVE_THROUGHPUT_OPTIMIZED mode) instead of behind Serve's proxy.

    Why: on a small machine the proxy hop is most of a request's cost. Measured on 2 cores with the demo's
    winner at concurrency 32: the proxy process spent 5.3 ms of CPU per request and the replica 19 ms
    (Ray's messaging on both sides), against 13 ms for the replica alone with direct ingress; 62 -> 104
    req/s (docs/serving.md, Serving the winner: Load). Several replicas, or a cluster (--address), keep the proxy: it is
    what spreads requests over replicas, and the cluster's Serve processes started without this setting.
    Must run before Ray starts and before `ray.serve` is imported: each process reads these on import."""
    if a.address or a.replicas != 1:
        return False
    os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "1"
    os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] = str(a.port)
    os.environ["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"] = str(a.port + 1)  # Serve's range leaves the end out
    # No outside load balancer is draining this replica: stop at once on Ctrl-C, not after 30 s.
    os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = "0"
    return True


