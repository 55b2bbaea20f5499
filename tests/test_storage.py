"""Where results go: `--storage` as a URI (file://, and s3:// against a local S3-compatible server), end to end
through search, leaderboard, finalize and reproduce; and result files as readable as any file the user makes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest
from conftest import TINY_SPACE, make_dataset
from procs import ROOT, kill_marked, marked_env, tune_cmd

from tune.cli import main
from tune.core import atomic_write_text
from tune.serving.serve import free_port

ONE_ARCH = TINY_SPACE[:TINY_SPACE.index("  mobilenet_v2:")]


def _search_args(tmp: Path, name: str, storage: str) -> list[str]:
    data = make_dataset(tmp / "data", n=10, size=32)
    (tmp / "s.yaml").write_text(ONE_ARCH)
    return ["search", "--data", str(data), "--space", str(tmp / "s.yaml"), "--name", name, "--storage", storage,
            "--no-finalize"]


@pytest.mark.slow
def test_file_uri_storage_end_to_end(ray_session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A new user's sequence: the trials go to the URI, the run folder to results/RUN, and every command
    finds the trials through run.json, with or without --storage."""
    monkeypatch.chdir(tmp_path)  # results/ is relative to where the user runs the commands
    uri = (tmp_path / "store").as_uri()
    assert main(_search_args(tmp_path, "u", uri)) == 0
    run_dir = tmp_path / "results" / "u"
    assert json.loads((run_dir / "run.json").read_text())["trials_root"] == f"{uri}/u"
    assert not (run_dir / "trials").exists()
    assert len(list((tmp_path / "store" / "u" / "search").glob("custom_cnn_*/result.json"))) == 2
    capsys.readouterr()
    for extra in ([], ["--storage", uri]):
        assert main(["leaderboard", "u", "--format", "json", *extra]) == 0
        rows = json.loads(capsys.readouterr().out)
        assert len(rows) == 2 and all(r["epochs"] >= 1 for r in rows), rows
    assert main(["finalize", "u", "--storage", uri, "--seeds", "1"]) == 0
    assert (run_dir / "models" / "custom_cnn.pth").is_file() and (run_dir / "comparison.json").is_file()
    capsys.readouterr()
    assert main(["reproduce", "u", "--storage", uri]) == 0
    assert "reproduced exactly" in capsys.readouterr().out
    # the same name again at the same URI never mixes with the earlier trials
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(_search_args(tmp_path, "u", uri)) == 2
    assert "already holds trials" in capsys.readouterr().err


def run(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """A command run where a user would run it: results/ is relative to `cwd`, never the repository."""
    env = {**env, "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_s3_storage_against_a_local_s3_server(tmp_path: Path) -> None:
    """moto's S3 server (PyPI moto[server]) on 127.0.0.1; Ray and the readers go through pyarrow's S3 filesystem."""
    pytest.importorskip("moto", reason="moto[server] (requirements.txt) provides the local S3 server")
    import pyarrow.fs

    port = free_port("127.0.0.1")
    env, mark = marked_env(TUNE_CACHE_DIR=str(tmp_path / "cache"), AWS_ACCESS_KEY_ID="testing",
                           AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                           AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
    moto = Path(os.sys.executable).parent / "moto_server"
    server = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        s3 = pyarrow.fs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", access_key="testing",
                                     secret_key="testing", region="us-east-1", allow_bucket_creation=True)
        deadline = time.time() + 30
        while True:
            try:
                s3.create_dir("bucket")
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.3)
        res = run(tune_cmd(*_search_args(tmp_path, "s", "s3://bucket/runs")), env, tmp_path, timeout=400)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        trials = s3.get_file_info(pyarrow.fs.FileSelector("bucket/runs/s/search"))
        assert len([i for i in trials if i.base_name.startswith("custom_cnn_")]) == 2
        board = run(tune_cmd("leaderboard", "s", "--format", "json"), env, tmp_path)
        assert board.returncode == 0 and len(json.loads(board.stdout)) == 2, board.stderr[-2000:]
        rep = run(tune_cmd("reproduce", "s", "--storage", "s3://bucket/runs"), env, tmp_path)
        assert rep.returncode == 0 and "reproduced exactly" in rep.stdout, rep.stdout[-2000:] + rep.stderr[-2000:]
    finally:
        server.terminate()
        server.wait(timeout=10)
        kill_marked(mark)


def test_result_files_follow_the_umask(tmp_path: Path) -> None:
    """Atomic writes go through mkstemp (mode 0600); the final file must get 0666 & ~umask like any new file."""
    for mask in (0o022, 0o002, 0o077):
        old = os.umask(mask)
        try:
            path = tmp_path / f"r{mask:o}.txt"
            atomic_write_text(path, "x")
            plain = tmp_path / f"plain{mask:o}.txt"
            plain.write_text("x")
        finally:
            os.umask(old)
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask == stat.S_IMODE(plain.stat().st_mode)
