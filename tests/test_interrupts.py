"""Stops that stop: SIGINT, SIGTERM and SIGKILL sent to the driver during a search and during finalize. Afterwards
no process the command started is left (psutil, and the marker every descendant inherits), the run folder reads,
and --resume or a rerun completes. Also the searcher's pickled state: its own data, never an Optuna sampler."""

from __future__ import annotations

import json
import pickle
import shutil
import signal
import subprocess
import time
from pathlib import Path

import optuna
import psutil
import pytest
from conftest import make_dataset, run_tiny_search
from procs import ROOT, kill_marked, marked_env, pids_with_mark, run, tune_cmd

from tune.runs.leaderboard import load_leaderboard
from tune.search.budget import Budget
from tune.search.searcher import ArchSearcher, StudyPlan
from tune.search.snapshots import restored_from
from tune.search.space import DefineByRun, parse_space

pytestmark = pytest.mark.slow
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)

SEARCH_SPACE = """
objectives: [val_auc: max, latency_ms: min]
sampler: SAMPLER
latency: {threads: 1, batch: 4, repeats: 2}
seed: 0
image_size: 40
budget: {trials: 3, max_epochs: 5, grace_period: 5, reduction_factor: 2, patience: 5}
resources: {cpus_per_trial: 1}
architectures:
  custom_cnn:
    lr: {type: loguniform, low: 1.0e-4, high: 1.0e-3}
    base_width: {type: categorical, choices: [16, 24]}
"""


class Watched:
    """A command started with a marker; every descendant psutil sees while it runs is remembered."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(tune_cmd(*args), env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.seen: dict[int, float] = {}

    def look(self) -> None:
        try:
            for p in psutil.Process(self.proc.pid).children(recursive=True):
                self.seen.setdefault(p.pid, p.create_time())
        except psutil.Error:
            pass

    def wait_for(self, ready, timeout: float = 240) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline and self.proc.poll() is None:
            self.look()
            if ready():
                return
            time.sleep(0.2)
        out, err = self.proc.communicate(timeout=30) if self.proc.poll() is not None else ("", "")
        raise AssertionError(f"not ready (exit {self.proc.poll()}): {out[-2000:]} {err[-2000:]}")

    def signal(self, sig: int, within: float) -> tuple[int, str, str]:
        """Send `sig`; the command must exit within `within` s. Returns (exit code, stdout, stderr)."""
        self.look()
        t0 = time.time()
        self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=within + 30)
        took = time.time() - t0
        assert took <= within, f"{signal.Signals(sig).name}: exited after {took:.1f} s (bound {within} s)"
        return self.proc.returncode, out, err

    def assert_nothing_left(self, mark: str) -> None:
        """Within 10 s of the command's end, no process it started is alive."""
        deadline = time.time() + 10
        while time.time() < deadline:
            alive = [pid for pid, t in self.seen.items() if _alive(pid, t)] + pids_with_mark(mark)
            if not alive:
                return
            time.sleep(0.2)
        raise AssertionError(f"left running: {[(pid, _cmd(pid)) for pid in set(alive)]}")


def _alive(pid: int, created: float) -> bool:
    try:
        p = psutil.Process(pid)
        return p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _cmd(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())[:120]
    except psutil.Error:
        return "?"


def _epochs(trials: Path) -> list[int]:
    return [len([ln for ln in (d / "result.json").read_text().splitlines() if ln.strip()])
            for d in trials.glob("custom_cnn_*") if (d / "result.json").exists()]


def _search(tmp_path: Path, sampler: str, env: dict[str, str]) -> tuple[Watched, list[str], Path]:
    data = make_dataset(tmp_path / "data", n=40, size=40)
    (tmp_path / "s.yaml").write_text(SEARCH_SPACE.replace("SAMPLER", sampler))
    args = ["search", "--data", str(data), "--space", str(tmp_path / "s.yaml"), "--name", "r",
            "--storage", str(tmp_path / "results")]
    return Watched(args, env), args, tmp_path / "results" / "r"


def _study_trials(run_dir: Path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="r-custom_cnn", storage=f"sqlite:///{run_dir / 'optuna.db'}").trials


# --------------------------------------------------------------------------- the searcher's state
def test_the_searcher_pickles_its_own_data_and_reopens_the_study(tmp_path: Path) -> None:
    """No Optuna sampler in the pickle (5.1.0's NSGA-II holds a lock); unpickled, the study is read back from
    optuna.db, running trials are linked to their Ray trials, and one Ray never knew is FAILed on restore."""
    space = parse_space({"objectives": [{"val_auc": "max"}, {"latency_ms": "min"}], "sampler": "nsga2",
                         "architectures": {"custom_cnn": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}}})
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    plan = StudyPlan(space=DefineByRun(space, "custom_cnn"), study_name="s", url=url, sampler="nsga2", seed=0,
                     startup=2, metric=["score", "latency_ms"], mode=["max", "min"])
    searcher = ArchSearcher({"custom_cnn": plan}, Budget(("custom_cnn",), 4, None), metric="score", mode="max")
    for t in ("t1", "t2", "t3"):
        assert isinstance(searcher.suggest(t), dict)
    searcher.on_trial_complete("t1", {"score": 0.9, "latency_ms": 2.0, "ended": "completed"})
    blob = pickle.dumps(searcher)
    assert b"optuna.samplers" not in blob and b"NSGAIISampler" not in blob
    again = pickle.loads(blob)
    child = again.children["custom_cnn"]
    assert set(child._ot_trials) == {"t1", "t2", "t3"} - child._completed_trials and "t1" in child._completed_trials
    assert isinstance(again.suggest("t4"), dict)  # the rebuilt sampler samples

    searcher.save(str(tmp_path / "state.pkl"))  # Ray's last snapshot knew t1..t3; Optuna made t4 after it
    restored = pickle.loads(blob)
    restored.restore(str(tmp_path / "state.pkl"))
    states = {t.user_attrs["ray_trial_id"]: t.state for t in _study_trials_at(url)}
    assert states["t4"] == optuna.trial.TrialState.FAIL and states["t2"] == optuna.trial.TrialState.RUNNING
    assert set(restored.children["custom_cnn"]._ot_trials) >= {"t2", "t3"}


def _study_trials_at(url: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="s", storage=url).trials


@pytest.mark.parametrize("sampler", ["nsga2"])  # the sampler whose lock broke the snapshot; tpe is pickled alike
def test_a_two_objective_search_snapshotted_killed_and_resumed(tmp_path: Path, sampler: str) -> None:
    """Ray snapshots the experiment (the searcher included) every second here; a SIGKILL mid-search leaves no
    process behind, and --resume finishes every trial of the study. (Every step, as test_search's SIGKILL test
    does, kept a copy of the snapshot in flight so often that the kill tore it under load: Ray keeps no older one,
    and --resume then refuses in one line, which that test's own file covers.)"""
    env, mark = marked_env(TUNE_CACHE_DIR=str(tmp_path / "cache"), TUNE_GLOBAL_CHECKPOINT_S="1")
    try:
        w, args, run_dir = _search(tmp_path, sampler, env)
        trials = run_dir / "trials" / "search"
        w.wait_for(lambda: sum(_epochs(trials)) >= 3 and len(list(trials.glob("searcher-state-*.pkl"))) >= 1)
        time.sleep(2.5)  # a few more snapshots of the searcher, each pickling it
        assert w.signal(signal.SIGKILL, within=5)[0] == -signal.SIGKILL
        w.assert_nothing_left(mark)
    finally:
        kill_marked(mark)
    env, mark = marked_env(TUNE_CACHE_DIR=str(tmp_path / "cache"))
    try:
        res = run(tune_cmd(*args, "--resume", "--no-finalize"), env, timeout=400)
    finally:
        kill_marked(mark)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    df = load_leaderboard(run_dir)
    assert len(df) == 3 and set(df["ended"]) <= {"completed", "early_stopped", "stopped_by_asha"}, df
    study = _study_trials(run_dir)
    assert all(t.state in FINISHED for t in study), [(t.number, t.state) for t in study]
    by_id = {t.user_attrs.get("ray_trial_id"): t for t in study}
    assert all(by_id[t].state == optuna.trial.TrialState.COMPLETE for t in df["trial_id"]), df


# SIGTERM takes the same path (stop_gracefully forwards both); the finalize tests below send it.
@pytest.mark.parametrize("sig", [signal.SIGINT])
def test_an_interrupted_search_says_how_to_resume_and_never_finalizes(tmp_path: Path, sig: int) -> None:
    """Then the run folder is damaged as a SIGKILL on a slow machine left it (seen on CI): Ray's snapshot cut short,
    and the checkpoint it names for a running trial already deleted for a newer one. --resume still finishes."""
    env, mark = marked_env(TUNE_CACHE_DIR=str(tmp_path / "cache"), TUNE_GLOBAL_CHECKPOINT_S="0")
    try:
        w, args, run_dir = _search(tmp_path, "tpe", env)
        w.wait_for(lambda: sum(_epochs(run_dir / "trials" / "search")) >= 2)
        code, out, err = w.signal(sig, within=60)
        w.assert_nothing_left(mark)
    finally:
        kill_marked(mark)
    assert code == 128 + sig, (code, out[-2000:], err[-2000:])
    lines = [ln for ln in err.splitlines() if "resume with:" in ln]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    command = lines[0].split("resume with: ", 1)[1]
    assert command == f"python -m tune search --name r --resume --storage {tmp_path / 'results'}", command
    assert "finalize" not in out and not (run_dir / "finalize").exists() and "search finished" not in out
    assert len(load_leaderboard(run_dir)) >= 1  # the run folder reads
    moved = _damage(run_dir / "trials" / "search")

    env, mark = marked_env(TUNE_CACHE_DIR=str(tmp_path / "cache"))
    try:
        res = run(tune_cmd(*command.split()[3:], "--no-finalize"), env, timeout=400)
    finally:
        kill_marked(mark)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "was cut short when the search was stopped; resuming from the whole one" in res.stdout, res.stdout
    assert f"{moved}, which the snapshot names, was already replaced" in res.stdout, res.stdout
    df = load_leaderboard(run_dir)
    assert len(df) == 3 and set(df["ended"]) <= {"completed", "early_stopped", "stopped_by_asha"}, df
    assert all(t.state in FINISHED for t in _study_trials(run_dir))


def _damage(experiment: Path) -> str:
    """Cut Ray's snapshot short, and move the checkpoint that KeepWhole's copy of it names for an unfinished trial
    to a later name, as Ray's rotation does. Returns the checkpoint's name."""
    state = next(experiment.glob("experiment_state-*.json"))
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    kept = json.loads(next(experiment.glob(".whole/*/experiment_state-*.json")).read_text())
    for trial_json, meta_json in kept["trial_data"]:
        trial, meta = json.loads(trial_json), json.loads(meta_json)
        named = restored_from(meta)
        if trial["status"] != "TERMINATED" and named:
            folder = experiment / trial["relative_logdir"]
            later = f"checkpoint_{int(named.rsplit('_', 1)[1]) + 7:06d}"  # past any the trial wrote (5 epochs)
            (folder / named).rename(folder / later)
            return named
    raise AssertionError(f"no unfinished trial with a checkpoint in the kept snapshot: {kept['trial_data']}")


# --------------------------------------------------------------------------- finalize
FINALIZE_SPACE = """
metric: val_auc
seed: 0
image_size: 48
budget: {trials: 1, max_epochs: 12, grace_period: 12, reduction_factor: 2, patience: 12}
resources: {cpus_per_trial: 1}
architectures:
  custom_cnn:
    lr: {type: loguniform, low: 1.0e-4, high: 1.0e-3}
    base_width: {type: categorical, choices: [24]}
"""


@pytest.fixture(scope="module")
def searched(ray_session, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-trial search whose retrainings take several seconds each."""
    tmp = tmp_path_factory.mktemp("searched")
    return run_tiny_search(tmp, name="f", space=FINALIZE_SPACE, data=make_dataset(tmp / "data", n=60, size=48))


# SIGINT ends the workers as SIGTERM does (both raise Interrupted in the command); the search test sends it.
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_an_interrupted_finalize_ends_its_workers_and_a_rerun_completes(searched: Path, tmp_path: Path,
                                                                        sig: int) -> None:
    run_dir = tmp_path / "f"
    shutil.copytree(searched, run_dir)
    env, mark = marked_env(TUNE_CACHE_DIR=str(tmp_path / "cache"))
    args = ["finalize", str(run_dir), "--seeds", "2"]
    try:
        w = Watched(args, env)

        def training() -> bool:  # both retrainings running in their workers
            return len([p for p in w.seen if "multiprocessing" in _cmd(p) and _alive(p, w.seen[p])]) >= 2

        w.wait_for(training)
        time.sleep(1.0)
        code, out, err = w.signal(sig, within=10)
        w.assert_nothing_left(mark)
    finally:
        kill_marked(mark)
    assert code == (-sig if sig == signal.SIGKILL else 128 + sig), (code, out[-2000:], err[-2000:])
    assert "Traceback" not in err, err[-3000:]
    assert not list((run_dir / "finalize").glob("*/seed*/record.json"))  # nothing finished, nothing half-written

    env, mark = marked_env(TUNE_CACHE_DIR=str(tmp_path / "cache"))
    try:
        res = run(tune_cmd(*args), env, timeout=400)
    finally:
        kill_marked(mark)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert len(list((run_dir / "finalize").glob("*/seed*/record.json"))) == 2
