"""`python -m tune serve`."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from typing import TYPE_CHECKING

from tune import inference
from tune.cli.common import add_address, add_model_choice, add_threads, model_choice
from tune.core import UserError, processes
from tune.search.cluster import loopback_only, quiet_ray, start_ray
from tune.serving import shutdown
from tune.serving.serve import ServeOptions, check_options, direct_ingress, free_port, model_path

if TYPE_CHECKING:
    from tune.serving.serve import ServeOptions


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a model over HTTP on Ray Serve (API, web page, batching)")
    add_model_choice(p, run_help="serve RUN's picked model (finalize --pick: results/RUN/models/picked/), or with "
                     "--arch its finalized model of that architecture",
                     arch_help="with --run: which finalized model (results/RUN/models/ARCH.pth)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine "
                   "only; a network interface's address, or all interfaces, exposes the API to the network)")
    p.add_argument("--port", type=int, default=8000, help="default: %(default)s")
    p.add_argument("--replicas", type=int, default=1, help="model replicas (default: %(default)s)")
    add_threads(p, "torch threads per replica (default: CPUs / replicas)")
    p.add_argument("--max-batch", type=int, default=32, help="largest batch of requests per forward pass "
                   "(default: %(default)s)")
    p.add_argument("--batch-wait-ms", type=float, default=10.0, help="how long a batch may wait to fill, only "
                   "while the replica is still reading other requests; a lone request does not wait (default: "
                   "%(default)s)")
    p.add_argument("--max-bytes", type=int, default=20_000_000, help="largest request body in bytes; more is "
                   "answered 413 (default: %(default)s)")
    p.add_argument("--max-video-s", type=float, default=120.0, help="longest clip /predict/video takes, in seconds "
                   "(read from the container before decoding); longer is answered 413 (default: %(default)s)")
    add_address(p, "deploy on an existing Ray cluster (e.g. auto or HOST:6379) instead of a local Ray")
    p.set_defaults(func=run)


def serve_options(a: argparse.Namespace) -> ServeOptions:
    return ServeOptions(host=a.host, port=a.port, replicas=a.replicas, threads=a.threads, max_batch=a.max_batch,
                        batch_wait_ms=a.batch_wait_ms, max_bytes=a.max_bytes, max_video_s=a.max_video_s,
                        address=a.address)


def run(args: argparse.Namespace) -> int:
    a = serve_options(args)  # from here on the typed options, checked before anything starts
    check_options(a)
    path = model_path(model_choice(args))
    loaded = inference.load(path)  # here, so a bad model file is one line before any Ray starts
    for note in loaded.notes:
        print(f"note: {note}")

    quiet_ray()
    if not a.address:
        loopback_only()

    import ray  # ray only now, after quiet_ray and loopback_only set its environment (and not at start-up)

    direct = not ray.is_initialized() and direct_ingress(a)  # a Ray already running keeps its settings
    # Before Ray starts: every process it starts for this command inherits the marker, so a stop can end them.
    mark = shutdown.mark_processes() if not (a.address or ray.is_initialized()) else None
    from ray import serve  # ray and Ray Serve: imported once Ray's environment is set (quiet_ray, loopback_only)

    from tune.serving import app as serve_app  # imports ray and fastapi at its top: after the settings too

    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    cpus = os.cpu_count() or 1
    # SIGTERM (a service manager's stop) stops as Ctrl-C does; either, once, starts the bounded stop. Set
    # before Ray starts, so a signal while it starts still ends what it started.
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    shutdown.arm()
    handle, started, code = None, False, 1
    try:
        started = start_ray(a.address, num_cpus=max(cpus, a.replicas))  # room for every replica
        shutdown.arm()  # again: ray.init replaced the SIGTERM handler
        threads = a.threads or max(1, cpus // a.replicas)
        # With direct ingress the replica answers on --port itself; Serve's proxy, which it still starts,
        # gets a spare loopback port nobody is told about.
        proxy_port = free_port(a.host) if direct else a.port
        serve.start(http_options={"host": a.host, "port": proxy_port}, logging_config={"log_level": "WARNING"})
        app = serve_app.build(path, replicas=a.replicas, max_batch=a.max_batch, batch_wait_ms=a.batch_wait_ms,
                              max_bytes=a.max_bytes, threads=threads,
                              cpus_per_replica=min(float(threads), cpus / a.replicas) if not a.address else 1.0,
                              loopback=not a.address, max_video_s=a.max_video_s)
        try:
            handle = serve.run(app, name="detector", route_prefix="/", logging_config={"log_level": "WARNING"})
        except RuntimeError as e:  # a replica failed to start; Ray's logs have its traceback
            raise UserError(f"the model server did not start: {str(e).strip().splitlines()[0][:300]} "
                            "(replica logs: /tmp/ray/session_latest/logs/serve/)") from None
        # One call now, so the stop's drain call finds the handle's routing already set up (seconds under load).
        handle.ready.remote().result(timeout_s=60)
        shown = f"[{a.host}]" if ":" in a.host else a.host
        print(f"serving {loaded.arch} ({path}, sha256 {loaded.sha256[:12]}) at http://{shown}:{a.port}/ "
              f"with {a.replicas} replica(s), batches of up to {a.max_batch} ({a.batch_wait_ms:g} ms wait); "
              "Ctrl-C stops", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping ...", flush=True)
    finally:
        code, line = shutdown.stop(handle, ray_started=started, local=mark is not None, mark=mark)
        for s, handler in previous.items():
            signal.signal(s, handler)
        print(line, flush=True)
    if mark is not None:
        # Everything this command started has ended, and its output is flushed. The interpreter's own teardown
        # after a Ray driver and Serve handle took another 4-6 s (in C, measured on 2 cores); skip it.
        logging.shutdown()
        sys.stderr.flush()
        processes.finish()  # os._exit skips the reaper's wait (tune/__main__.py)
        os._exit(code)
    return code
