"""`python -m tune serve --model PATH | --run RUN --arch ARCH [--host 127.0.0.1] [--port 8000] ...`

Serves a trained detector over HTTP on Ray Serve (the API is in tune/serve_app.py): a local,
loopback-only Ray without a dashboard unless `--address` names an existing cluster. Prints the
URL once the model answers, and shuts Serve and the Ray it started down on Ctrl-C (or SIGTERM).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import time
from pathlib import Path

from tune.core import UserError
from tune.runs.inference import MODEL_FILES


def model_path(a: argparse.Namespace) -> Path:
    """--model as given, or the winner `--run RUN --arch ARCH` exported by finalize (RUN/models/ARCH.pth)."""
    if a.model:
        return Path(a.model)
    if not (a.run and a.arch):
        raise UserError("say which model to serve: --model PATH, or --run RUN --arch ARCH")
    from tune.runs.layout import Run, resolve_run, results_root

    return Run(resolve_run(a.run, results_root(a.storage))).model(a.arch)


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


def check_options(a: argparse.Namespace) -> None:
    for name, low in (("port", 1), ("replicas", 1), ("max_batch", 1), ("max_bytes", 1)):
        if getattr(a, name) < low:
            raise UserError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(a, name)}")
    if a.port > 65535:
        raise UserError(f"--port must be <= 65535, got {a.port}")
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


def direct_ingress(a: argparse.Namespace) -> bool:
    """One replica on a Ray this command starts: let the replica answer HTTP on --port itself (Ray Serve's
    direct ingress, part of its RAY_SERVE_THROUGHPUT_OPTIMIZED mode) instead of behind Serve's proxy.

    Why: on a small machine the proxy hop is most of a request's cost. Measured on 2 cores with the demo's
    winner at concurrency 32: the proxy process spent 5.3 ms of CPU per request and the replica 19 ms
    (Ray's messaging on both sides), against 13 ms for the replica alone with direct ingress; 62 -> 104
    req/s (README, Serving the winner: Load). Several replicas, or a cluster (--address), keep the proxy: it is
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


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def cmd_serve(a: argparse.Namespace) -> int:
    from tune.runs import inference

    check_options(a)
    path = model_path(a)
    loaded = inference.load(path)  # here, so a bad model file is one line before any Ray starts
    for note in loaded.notes:
        print(f"note: {note}")
    from tune.search.driver import loopback_only, quiet_ray

    quiet_ray()
    if not a.address:
        loopback_only()
    import logging

    import ray

    direct = not ray.is_initialized() and direct_ingress(a)  # a Ray already running keeps its settings
    from ray import serve

    from tune.serving import app as serve_app

    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    cpus = os.cpu_count() or 1
    started = False
    if not ray.is_initialized():
        if a.address:
            ray.init(address=a.address, log_to_driver=False)
        else:  # a fresh local Ray, never joining another one by accident; room for every replica
            ray.init(address="local", num_cpus=max(cpus, a.replicas), include_dashboard=False, log_to_driver=False)
        started = True
    # SIGTERM (a service manager's stop) shuts down as cleanly as Ctrl-C.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        threads = a.threads or max(1, cpus // a.replicas)
        # With direct ingress the replica answers on --port itself; Serve's proxy, which it still starts,
        # gets a spare loopback port nobody is told about.
        proxy_port = free_port(a.host) if direct else a.port
        serve.start(http_options={"host": a.host, "port": proxy_port}, logging_config={"log_level": "WARNING"})
        app = serve_app.build(path, replicas=a.replicas, max_batch=a.max_batch, batch_wait_ms=a.batch_wait_ms,
                              max_bytes=a.max_bytes, threads=threads,
                              cpus_per_replica=min(float(threads), cpus / a.replicas) if not a.address else 1.0,
                              loopback=not a.address)
        try:
            serve.run(app, name="detector", route_prefix="/", logging_config={"log_level": "WARNING"})
        except RuntimeError as e:  # a replica failed to start; Ray's logs have its traceback
            raise UserError(f"the model server did not start: {str(e).strip().splitlines()[0][:300]} "
                            "(replica logs: /tmp/ray/session_latest/logs/serve/)") from None
        shown = f"[{a.host}]" if ":" in a.host else a.host
        print(f"serving {loaded.arch} ({path}, sha256 {loaded.sha256[:12]}) at http://{shown}:{a.port}/ "
              f"with {a.replicas} replica(s), batches of up to {a.max_batch} ({a.batch_wait_ms:g} ms wait); "
              "Ctrl-C stops", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping ...", flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
        try:
            serve.shutdown()
        finally:
            if started:
                ray.shutdown()
    print("stopped", flush=True)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a model over HTTP on Ray Serve (API, web page, batching)")
    p.add_argument("--model", type=Path, help=MODEL_FILES)
    p.add_argument("--run", help="with --arch: serve RUN's finalized model of that architecture")
    p.add_argument("--arch", help="with --run: which finalized model (results/RUN/models/ARCH.pth)")
    p.add_argument("--storage", help="folder holding run folders, for --run (default: results)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine "
                   "only; a network interface's address, or all interfaces, exposes the API to the network)")
    p.add_argument("--port", type=int, default=8000, help="default: %(default)s")
    p.add_argument("--replicas", type=int, default=1, help="model replicas (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per replica (default: CPUs / replicas)")
    p.add_argument("--max-batch", type=int, default=32, help="largest batch of requests per forward pass "
                   "(default: %(default)s)")
    p.add_argument("--batch-wait-ms", type=float, default=10.0, help="how long a batch may wait to fill, only "
                   "while the replica is still reading other requests; a lone request does not wait (default: "
                   "%(default)s)")
    p.add_argument("--max-bytes", type=int, default=20_000_000, help="largest request body in bytes; more is "
                   "answered 413 (default: %(default)s)")
    p.add_argument("--address", help="deploy on an existing Ray cluster (e.g. auto or HOST:6379) instead of a "
                   "local Ray")
    p.set_defaults(func=cmd_serve)
