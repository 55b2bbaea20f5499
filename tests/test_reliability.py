"""Faults injected for real: a killed trial worker, a diverging loss, a trial that raises,
results that cannot be written, servers that must only listen on loopback."""

from __future__ import annotations

import errno
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from conftest import TINY_SPACE, make_dataset, run_tiny_search
from procs import result_rows

from tune.runs.leaderboard import load_leaderboard

pytestmark = pytest.mark.slow

ONE_ARCH = """
metric: val_auc
seed: 0
image_size: 48
budget: {trials: 2, max_epochs: 5, grace_period: 5, reduction_factor: 2, patience: 5}
resources: {cpus_per_trial: 1}
architectures:
  custom_cnn:
    lr: {type: loguniform, low: 1.0e-4, high: 1.0e-3}
    base_width: {type: categorical, choices: [16, 24]}
"""


def test_killed_trial_worker_is_retried_from_its_checkpoint(ray_session, tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", n=40, size=48)
    killed: dict[str, object] = {}

    def killer() -> None:  # SIGKILL the worker process of the first trial that reached epoch 2
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            for f in (tmp_path / "results").glob("k/trials/search/custom_cnn_*/result.json"):
                rows = result_rows(f)
                if len(rows) >= 2 and rows[-1]["epoch"] < 5:
                    killed.update(trial=f.parent.name, pid=rows[-1]["pid"], epoch=rows[-1]["epoch"])
                    os.kill(rows[-1]["pid"], signal.SIGKILL)
                    return
            time.sleep(0.05)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    run_dir = run_tiny_search(tmp_path, name="k", space=ONE_ARCH, data=data)
    t.join()
    assert killed, "no trial was caught mid-way"
    df = load_leaderboard(run_dir)
    assert len(df) == 2 and set(df["ended"]) <= {"completed", "early_stopped"}, df  # one row per trial
    rows = result_rows(run_dir / "trials" / "search" / str(killed["trial"]) / "result.json")
    epochs = [r["epoch"] for r in rows]
    assert epochs.count(1) == 1, epochs  # resumed from a checkpoint, not from scratch
    assert len({r["pid"] for r in rows}) == 2  # ...in a new worker process
    assert max(epochs) == 5


def test_diverging_and_raising_trials_are_recorded_and_the_search_goes_on(ray_session, tmp_path: Path) -> None:
    space = TINY_SPACE.replace("lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}\n    conv_blocks",
                               "lr: 1.0e+30\n    conv_blocks")  # Adam with this lr overflows to inf/NaN
    # sampled (not fixed, which the driver checks before any trial): every trial raises
    space = space.replace("weights: none", "weights: {type: categorical, choices: [/nonexistent/weights.pth]}")
    run_dir = run_tiny_search(tmp_path, name="faults", space=space, max_failures=0)
    df = load_leaderboard(run_dir)
    cnn, mob = df[df.arch == "custom_cnn"], df[df.arch == "mobilenet_v2"]
    assert len(cnn) == 2 and (cnn["ended"] == "diverged").all(), cnn
    assert len(mob) == 2 and (mob["ended"] == "errored").all(), mob
    assert mob["error"].str.contains("weights file not found: /nonexistent/weights.pth").all()
    assert (run_dir / "leaderboard.csv").is_file()


def test_unwritable_results_one_line_and_nothing_half_written(tiny_run: Path, tmp_path: Path, capsys,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import tune.core as utils
    from tune.cli import main
    from tune.runs.leaderboard import write_leaderboard

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = (run / "leaderboard.csv").read_bytes()
    real_write = os.write

    def full_disk(fd: int, data: bytes) -> int:  # the disk fills up half-way through the file
        real_write(fd, bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(utils.os, "fdopen", lambda fd, mode: _Writer(fd, full_disk))
    with pytest.raises(OSError):
        write_leaderboard(run)
    assert (run / "leaderboard.csv").read_bytes() == before  # the old file is intact
    assert not list(run.glob(".*.tmp"))  # and no temporary file is left behind
    monkeypatch.undo()
    # A folder that cannot be created (read-only even for root): one line, exit 2. (Good data: the search checks
    # its data before it makes the run folder, so a bad dataset would be the one line instead.)
    data = make_dataset(tmp_path / "data", n=4, size=32, splits=("train", "valid"))
    code = main(["search", "--data", str(data), "--storage", "/proc/not-writable", "--name", "x",
                 "--no-finalize"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and "/proc/not-writable" in err[0], err


def test_a_result_file_a_killed_copy_cut_short_is_mended_and_read_by_epoch(tiny_run: Path, tmp_path: Path) -> None:
    """Ray copies result.json into the run folder by rewriting it: a driver killed mid-copy leaves it cut
    short, mid-line. --resume must not let the torn line swallow the next row, and the leaderboard counts
    the trial's own epochs, not the rows that survived."""
    import shutil

    from tune.runs.trials import mend_torn_results

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    whole = load_leaderboard(run).set_index("trial_id")
    # a trial that ran both epochs (ASHA may stop the others after one): the longest result.json, by name on a tie
    result = max(sorted((run / "trials").rglob("result.json")), key=lambda p: len(p.read_text().splitlines()))
    second = result.read_text().splitlines()[1]
    result.write_text(second + "\n" + second[: len(second) // 2])  # the first row lost, the second torn off
    location = str(result.parent.parent)
    assert mend_torn_results(location) == [str(result)]
    assert result.read_text() == second + "\n"
    assert mend_torn_results(location) == []  # nothing more to mend
    cut = load_leaderboard(run).set_index("trial_id")
    trial = result.parent.name.rsplit("_", 1)[1]
    assert cut.loc[trial, "epochs"] == whole.loc[trial, "epochs"] == 2
    if whole.loc[trial, "best_epoch"] == 2:  # the kept epoch's row survived: the same score, read by epoch
        assert cut.loc[trial, "score"] == whole.loc[trial, "score"]


class _Writer:
    def __init__(self, fd: int, write) -> None:
        self.fd, self._write = fd, write

    def __enter__(self) -> _Writer:
        return self

    def __exit__(self, *a: object) -> None:
        os.close(self.fd)

    def write(self, data: bytes) -> int:
        return self._write(self.fd, data)

    def flush(self) -> None:
        pass

    def fileno(self) -> int:
        return self.fd
