"""finalize's retrainings and evaluate's scoring as Ray tasks on a cluster (`--address`, or the address the
search recorded in run.json).

- **Retrainings.** `Cluster.submit` runs one (model, seed) retraining as a Ray task with the trials' resources
  (the space's cpus_per_trial, gpus_per_trial), and hands back a concurrent.futures.Future, so
  tune/evaluation/retrain.py waits on it as on a local worker pool's. Ray retries a task whose node died
  (MAX_RETRIES): a dead node costs only the retrainings it was running, rerun on another node. A retraining
  writes its seed folder with record.json last, so a killed one leaves no record and its rerun starts over.
- **Scoring.** `score_chunks` scores each chunk of files evaluate cuts (tune/evaluation/evaluate.py) as one
  task; a chunk is exactly the batches the local scoring runs, so the numbers are the same.

Every node must see the data, the caches and the run folder at the same paths as the driver (a shared folder):
tasks are sent paths, never images, and write their results where the driver reads them.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tune.data.perturb import Condition
from tune.inference import LoadedModel, load
from tune.search.cluster import quiet_ray

LOCAL = "local"  # --address local: this machine's worker processes, whatever run.json recorded
MAX_RETRIES = 3  # reruns of a task whose node or worker process died (never of one that raised)


def cluster_address(given: str | None, recorded: str | None) -> str | None:
    """The cluster to use: --address, else the one the search ran on (run.json); None (or `local`): this machine."""
    address = given or recorded
    return None if address in (None, "", LOCAL) else address


@contextlib.contextmanager
def connected(address: str) -> Iterator[None]:
    """Ray joined at `address` for the block, with the tasks' prints forwarded to this terminal (log_to_driver;
    Ray prefixes each line with the task and its pid, our log lines add the node), then left."""
    quiet_ray()  # RAY_DEDUP_LOGS=0: every seed's epoch lines shown, not folded into "repeated 2x"
    import ray  # heavy: only a command given a cluster joins one, after quiet_ray set Ray's environment

    if ray.is_initialized():  # a caller's own connection (a test, a search's finalize step): used as it is
        yield
        return
    ray.init(address=address, log_to_driver=True)
    try:
        yield
    finally:
        ray.shutdown()


def node_id() -> str:
    import ray  # heavy: runs inside a Ray task, where ray is imported already

    return str(ray.get_runtime_context().get_node_id())


def tagged(node: str) -> Callable[[str], None]:
    """print, each line tagged with the node (its id's first 8 hex digits, as `ray status` shows them)."""
    def log(line: str) -> None:
        print(f"[node {node[:8]}] {line}", flush=True)
    return log


def _on_node(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """One retraining in a Ray task: `fn(*args, log=, node=)` told which node it runs on (it records it)."""
    node = node_id()
    return fn(*args, log=tagged(node), node=node)


class Cluster(Executor):
    """The cluster as an executor for finalize's retrainings: submit(fn, *args) runs fn(*args, log=..., node=...)
    as a Ray task with one trial's resources and returns a Future."""

    def __init__(self, cpus: float, gpus: float) -> None:
        import ray  # heavy: only with a cluster, joined (connected) before this

        self.gpus = gpus if ray.cluster_resources().get("GPU", 0) else 0  # no GPU anywhere: CPUs only, as trials
        self.task = ray.remote(_on_node).options(num_cpus=cpus, num_gpus=self.gpus, max_retries=MAX_RETRIES,
                                                 retry_exceptions=False, name="retrain")
        self.refs: list[Any] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        assert not kwargs, "the task passes log and node itself"
        ref = self.task.remote(fn, args)
        self.refs.append(ref)
        return ref.future()

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:  # type: ignore[override]
        """Leaving by an exception (an interrupt, a failed retraining) cancels the other tasks: none trains on
        for a finalize that stopped."""
        if kind is not None and self.refs:  # ray.wait refuses an empty list
            import ray  # heavy: imported already (__init__)

            _, running = ray.wait(self.refs, num_returns=len(self.refs), timeout=0)  # not the finished (score_chunks)
            for ref in running:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)


def trial_resources(space: dict[str, Any]) -> tuple[float, float]:
    """(CPUs, GPUs) of one trial, as run.json's space records them."""
    r = space.get("resources", {})
    return float(r.get("cpus_per_trial", 1)), float(r.get("gpus_per_trial", 0) or 0)


# --------------------------------------------------------------------------- evaluate's scoring
@functools.lru_cache(maxsize=8)
def _model(path: str, mtime: float) -> LoadedModel:
    """A model loaded once per worker process (Ray reuses workers across tasks); the file's mtime in the key, so
    a model written anew is loaded anew."""
    return load(Path(path))


def _score_chunk(paths: dict[str, str], files: list[str], conditions: list[Condition], threads: int,
                 batch: int, prepare: Callable[..., Any]) -> tuple[list[int], dict[tuple[str, str], np.ndarray],
                                                                      dict[int, str]]:
    """One chunk prepared and scored on a node: the readable positions, each (model, condition)'s probabilities
    for them, and why the others failed."""
    torch.set_num_threads(threads)  # the driver's count: the same kernels, so the same numbers as a local run
    models = {n: _model(p, os.path.getmtime(p)) for n, p in paths.items()}
    sizes = sorted({(m.image_size, m.resize) for m in models.values()})
    with ThreadPoolExecutor(max_workers=threads) as pool:
        good, x, bad = prepare(pool, [Path(f) for f in files], conditions, sizes)
    probs = {(n, c.name): m.probabilities(x[c.name, (m.image_size, m.resize)], batch=batch)
             for n, m in models.items() for c in conditions} if good else {}
    return good, probs, bad


def score_chunks(models: dict[str, LoadedModel], chunks: list[list[Path]], conditions: list[Condition],
                 batch: int, prepare: Callable[..., Any]) -> Iterator[tuple[list[int], dict, dict[int, str]]]:
    """Each chunk scored as a Ray task, yielded in order (evaluate's local loop takes them as they come).
    `prepare` is evaluate's decoding (passed in: this module is imported by it, not the other way round)."""
    import ray  # heavy: only with a cluster, joined (connected) before this

    paths = {n: str(Path(m.path).absolute()) for n, m in models.items()}
    threads = torch.get_num_threads()  # each task scores with this many threads: the same kernels, the same numbers
    # and asks for as many CPUs, or for a whole node where no node has that many (a task asking for more than any
    # node has would wait forever)
    largest = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]), default=1)
    task = ray.remote(_score_chunk).options(num_cpus=max(1, min(threads, largest)), max_retries=MAX_RETRIES,
                                            name="score")
    refs = [task.remote(paths, [str(f) for f in chunk], conditions, threads, batch, prepare) for chunk in chunks]
    fetched = 0
    try:
        for ref in refs:
            result = ray.get(ref)
            fetched += 1
            yield result
    finally:  # an interrupted evaluation leaves no task scoring for nobody
        # Only the tasks not fetched: cancelling one whose result ray.get has just returned can race with Ray's own
        # bookkeeping of its completion, and the driver aborted ("Tried to complete task that was not pending",
        # task_manager.cc, Ray 2.60; seen once in the 2-node test)
        for ref in refs[fetched:]:
            with contextlib.suppress(Exception):
                ray.cancel(ref)
