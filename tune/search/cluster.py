"""Ray, started one way for the search and for serving: loopback only unless a cluster is asked for, no
dashboard, our own progress lines instead of Ray's chatter, and snapshots often enough for --resume."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

import torch

from tune.core import UserError
from tune.search.space import SearchSpace


def quiet_ray() -> None:
    """Keep the screen for our own progress lines (Ray's INFO chatter and snapshot warnings go), and
    snapshot the experiment often enough for --resume after a crash."""
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Ray snapshots the experiment every >= 10 s by default; a SIGKILL then finds trials pointing at checkpoints
    # rotated away since (seen: epochs of 0.1 s). Every 2 s, with two checkpoints kept per trial, a crash loses
    # at most the last 2 s of results unless a trial checkpoints twice within them.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Ray Tune's own Ctrl-C handler would end fit quietly, as if the search were done; the driver handles SIGINT
    # and SIGTERM itself (tune.search.driver.stop_gracefully) and asks Ray through SIGUSR1, as Ray's does.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    for name in ("ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.WARNING)


def loopback_only() -> None:
    """Make a local Ray bind every server to 127.0.0.1. On Linux Ray otherwise swaps "localhost"
    for the machine's reachable IP and listens on all interfaces. Must run before `import ray`."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def check_worker_paths(*paths: str) -> None:
    """Refuse, in one line, a Python or Ray installed under a path with white space: Ray starts Tune's and Serve's
    workers through `bash -c` with the path unquoted, so they die at start ("bash: /tmp/my: No such file") and the
    search waits for them forever (Ray 2.60; plain tasks are not affected)."""
    for path in paths:
        if any(c.isspace() for c in path):
            raise UserError(f"Ray cannot start its workers from a path with a space: {path!r}; put the project and "
                            "its .venv in a folder whose path has no spaces (Ray runs the worker command unquoted)")


def start_ray(address: str | None, *, num_cpus: int | None = None) -> bool:
    """Join the cluster at `address`, or start a fresh local Ray (never silently joining another one on this
    machine; every server on 127.0.0.1, no dashboard). False when Ray was already up in this process."""
    import ray  # heavy: ray only here, after quiet_ray and loopback_only set its environment

    if ray.is_initialized():
        return False
    if not address:
        check_worker_paths(sys.executable, os.path.dirname(ray.__file__))
    term = signal.getsignal(signal.SIGTERM)
    try:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                     log_to_driver=False)
    except (ConnectionError, TimeoutError, RuntimeError) as e:  # ray.init's own errors are these or bare Exception
        raise UserError(f"Ray could not start {f'at {address}' if address else 'on this machine'}: "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    except Exception as e:  # noqa: BLE001 - Ray 2.60 raises a bare Exception when its node times out starting
        if "timed out during startup" not in str(e):
            raise
        raise UserError(f"Ray could not start on this machine: {str(e).splitlines()[0]} (an overloaded machine "
                        "starts Ray slowly; try again when it is less busy)") from None
    if threading.current_thread() is threading.main_thread():  # ray.init's SIGTERM handler exits on the spot,
        signal.signal(signal.SIGTERM, term)  # skipping the command's clean-up (tune.core.processes)
    return True


def slots(space: SearchSpace) -> int:
    """How many trials run at once: the cluster's CPUs (and GPUs, with CUDA) over what one trial takes."""
    import ray  # heavy: ray only once the search runs

    res, r = ray.cluster_resources(), space.resources
    n = res.get("CPU", 1) // r.cpus_per_trial
    if torch.cuda.is_available() and r.gpus_per_trial:
        n = min(n, res.get("GPU", 0) // r.gpus_per_trial)
    return max(1, int(n))
