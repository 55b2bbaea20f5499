"""finalize on a Ray cluster (`--address`): the retrainings as Ray tasks on every node, the extra tests' scoring as
tasks over chunks, the same numbers as on one machine, and a node killed mid-finalize costing only its own
retraining. A real two-node cluster on this machine (ray.cluster_utils, everything on 127.0.0.1, no dashboard);
the finalize runs as a command, so this test process never joins the cluster beside its own local Ray."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import make_dataset, run_tiny_search
from procs import ROOT, kill_marked, marked_env, tune_cmd
from test_evaluate import save_detector

import tune.cli
from tune.cli.finalize import finalize
from tune.evaluation.finalize import FinalizeOptions

# One architecture, one trial; each retraining runs several seconds (long enough to kill its node mid-way).
SPACE = """
metric: val_auc
seed: 0
image_size: 48
budget: {trials: 1, max_epochs: 25, grace_period: 25, reduction_factor: 2, patience: 25}
resources: {cpus_per_trial: 1}
architectures:
  custom_cnn:
    lr: {type: loguniform, low: 1.0e-4, high: 1.0e-3}
    base_width: {type: categorical, choices: [16]}
"""
SEEDS = 2  # each node has 1 CPU and a retraining takes 1: the two seeds run one on each node, at once


def numbers(run: Path) -> dict[str, Any]:
    """comparison.json without its costs (this machine's timings) and the extra tests' date, the run folder's
    path made relative: the rest must be identical."""
    cmp = json.loads((run / "comparison.json").read_text().replace(str(run), "RUN"))
    cmp["evaluation"].pop("created")
    return {k: v for k, v in cmp.items() if k != "costs"}


def records(run: Path) -> dict[int, dict[str, Any]]:
    return {int(p.parent.name.removeprefix("seed")): json.loads(p.read_text())
            for p in (run / "finalize").glob("*/seed*/record.json")}


def finalize_on(cluster_address: str | None, run: Path, extra: Path, env: dict[str, str],
                out: Path) -> subprocess.Popen[str]:
    """`finalize RUN --address ADDRESS` (None: the address in run.json) as a command, its output to `out`."""
    address = ["--address", cluster_address] if cluster_address else []
    return subprocess.Popen(tune_cmd("finalize", str(run), "--seeds", str(SEEDS), "--extra-test", str(extra),
                                     *address),
                            env=env, cwd=ROOT, stdout=out.open("w"), stderr=subprocess.STDOUT, text=True)


def wait(proc: subprocess.Popen[str], out: Path, timeout: float) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
    text = out.read_text()
    assert proc.returncode == 0, text[-4000:]
    return text


@contextlib.contextmanager
def cluster_host(env: dict[str, str], mark: str) -> Iterator[subprocess.Popen[str]]:
    """tests/cluster_host.py, starting its two-node cluster (`nodes` waits for it); shut down on leaving."""
    host = subprocess.Popen([sys.executable, str(ROOT / "tests" / "cluster_host.py")], env=env, cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        yield host
    finally:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            host.communicate(timeout=120)  # end of input: the host shuts its cluster down
        kill_marked(mark)  # whatever a failed shutdown left


def nodes(host: subprocess.Popen[str]) -> dict[str, str]:
    """The cluster's address and node ids, once it is up."""
    assert host.stdout is not None
    line = host.stdout.readline()  # the cluster is up (or the host died: an empty line)
    assert line.startswith("{"), line
    return dict(json.loads(line))


@pytest.mark.slow
def test_finalize_on_a_two_node_cluster_and_a_node_killed_mid_way(ray_session, tmp_path: Path) -> None:
    env, mark = marked_env(TUNE_CACHE_DIR=str(tmp_path / "cache"), RAY_AUTH_MODE="token")
    with cluster_host(env, mark) as host:  # the cluster starts while the search and the local finalize run
        data = make_dataset(tmp_path / "data", n=40, size=48)
        extra = make_dataset(tmp_path / "extra", n=70, size=48, seed=1, splits=("x",)) / "x"  # 140 images: 2 chunks
        searched = run_tiny_search(tmp_path, name="c", space=SPACE, data=data)
        local, on_cluster, killed = (tmp_path / n / "c" for n in ("local", "cluster", "killed"))
        for run in (local, on_cluster, killed):
            shutil.copytree(searched, run)
        t0 = time.time()
        finalize(local, FinalizeOptions(seeds=SEEDS, cache_dir=tmp_path / "cache", extra_test=[extra]))
        print(f"finalize on this machine: {time.time() - t0:.1f} s")
        cluster = nodes(host)
        head, worker = cluster["head"], cluster["worker"]

        # (a) both nodes retrain, and every number is the local finalize's (the extra test's scoring included)
        out = tmp_path / "cluster.log"
        t0 = time.time()
        log = wait(finalize_on(cluster["address"], on_cluster, extra, env, out), out, timeout=400)
        print(f"finalize on 2 nodes: {time.time() - t0:.1f} s")
        assert {r["node_id"] for r in records(on_cluster).values()} == {head, worker}, log[-3000:]
        assert f"[node {worker[:8]}]" in log and "epoch" in log, log[-3000:]  # epoch lines reach us, tagged
        assert "scoring 2 chunk(s) of up to 128 images as Ray tasks" in log, log[-3000:]  # --extra-test's too
        assert numbers(on_cluster) == numbers(local)

        # (b) the worker node dies while it retrains: its seed is retrained again on the head, nothing else lost.
        # No --address: the cluster a search ran on, as run.json records it.
        record = json.loads((killed / "run.json").read_text())
        (killed / "run.json").write_text(json.dumps({**record, "address": cluster["address"]}))
        out = tmp_path / "killed.log"
        proc = finalize_on(None, killed, extra, env, out)
        deadline = time.time() + 300
        while f"[node {worker[:8]}]" not in out.read_text() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, out.read_text()[-3000:]
        assert host.stdin is not None and host.stdout is not None
        host.stdin.write("kill-worker\n")
        host.stdin.flush()
        assert host.stdout.readline().strip() == "killed"
        assert worker not in {r["node_id"] for r in records(killed).values()}, \
            "the worker's retraining ended before its node was killed: make it longer"
        killed_at = time.time()
        log = wait(proc, out, timeout=400)
        print(f"finalize ended {time.time() - killed_at:.1f} s after its worker node was killed")
        assert {r["node_id"] for r in records(killed).values()} == {head}, log[-3000:]
        assert numbers(killed) == numbers(local)


@pytest.mark.slow
def test_scoring_as_ray_tasks_gives_the_local_numbers(ray_session, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """evaluate --address's scoring (a Ray task per chunk) against scoring here: two models of different sizes, a
    perturbation, 140 images (two chunks); the session's local Ray stands in for the cluster (a command joined
    to one uses it as it is), so this runs the command's whole path but for ray.init."""
    a = save_detector(tmp_path / "a" / "custom_cnn.pth", size=40)
    b = save_detector(tmp_path / "b" / "custom_cnn.pth", size=32, seed=4)
    data = make_dataset(tmp_path / "data", n=70, size=40, splits=("x",)) / "x"
    args = ["evaluate", "--model", str(a), "--model", str(b), str(data), "--perturb", "jpeg=75", "--resamples", "50"]
    assert tune.cli.main([*args, "--out", str(tmp_path / "here")]) == 0
    assert "as Ray tasks" not in capsys.readouterr().out
    assert tune.cli.main([*args, "--out", str(tmp_path / "there"), "--address", "auto"]) == 0
    assert "scoring 2 chunk(s) of up to 128 images as Ray tasks on the cluster" in capsys.readouterr().out
    here, there = (json.loads((tmp_path / d / "evaluation.json").read_text()) for d in ("here", "there"))
    assert here.pop("created") and there.pop("created")
    assert here == there
    assert (tmp_path / "here" / "scores.csv").read_text() == (tmp_path / "there" / "scores.csv").read_text()
    assert len((tmp_path / "here" / "scores.csv").read_text().splitlines()) > 140  # every image scored
