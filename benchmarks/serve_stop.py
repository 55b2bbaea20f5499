"""How long `python -m tune serve` takes to stop on SIGTERM and SIGINT, idle CPUs or all busy, under request load.

    python benchmarks/serve_stop.py [--runs 3] [--signals TERM,INT] [--cpu-load no,yes] [--clients 4] [--replicas 1]

Each run starts the real server (its own loopback Ray) on a free port with a tiny model trained here,
starts `--clients` threads posting a PNG to /predict continuously, optionally one busy-looping process
per core (ended after 60 s at the latest), lets the load run `--warm` seconds and sends the signal. It
times the server's exit, counts the answers by status before and after the signal and the connection
errors after it, and counts the server's processes (found by an environment marker, as the tests do)
left when it exited and how long until none was left; leftovers are then killed. Prints one table row
per (signal, CPU load) with the median and max stop time over the runs.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import make_dataset  # noqa: E402
from procs import kill_marked, marked_env, tune_cmd  # noqa: E402
from stopload import Burners, Load, Stopped, stop_server  # noqa: E402

import tune.cli  # noqa: E402
from tune.serving.serve import free_port  # noqa: E402


def tiny_model(work: Path) -> tuple[Path, bytes]:
    data = make_dataset(work / "data", n=12, size=40)
    out = work / "model"
    assert tune.cli.main(["train", "--data", str(data), "--arch", "custom_cnn", "--epochs", "1", "--image-size", "32",
                          "--conv-blocks", "1", "--base-width", "4", "--head-sizes", "8", "--out", str(out)]) == 0
    return out / "best.pth", (data / "test" / "Fake" / "fake_0.png").read_bytes()


def one_run(model: Path, body: bytes, sig: signal.Signals, cpu_load: bool, clients: int,
            warm: float, replicas: int = 1) -> tuple[Stopped, Load, str]:
    port = free_port("127.0.0.1")
    env, mark = marked_env()
    cmd = tune_cmd("serve", "--model", str(model), "--port", str(port), "--replicas", str(replicas))
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    started = threading.Event()

    def pump() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if line.startswith("serving "):
                started.set()

    threading.Thread(target=pump, daemon=True).start()
    burners = None
    try:
        if not started.wait(240):
            raise SystemExit("the server did not start:\n" + "".join(lines)[-3000:])
        burners = Burners(60.0) if cpu_load else None
        load = Load(port, body, clients).start()
        load.wait_answered(clients)  # serving under this load before the warm-up clock starts
        time.sleep(warm)
        stopped = stop_server(proc, mark, sig, timeout=90, linger=30, load=load)
        load.stop()
    finally:
        if burners:
            burners.stop()
        if proc.poll() is None:
            proc.kill()
        kill_marked(mark)
    tail = [line.strip() for line in lines if line.startswith("stopped")]
    return stopped, load, (tail[-1] if tail else "").strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--signals", default="TERM,INT")
    ap.add_argument("--cpu-load", default="no,yes")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--warm", type=float, default=3.0, help="seconds of load before the signal")
    ap.add_argument("--model", type=Path, help="default: train a tiny custom CNN here")
    ap.add_argument("--replicas", type=int, default=1, help="more than 1: behind Serve's proxy")
    a = ap.parse_args()
    # A shell's background job starts with SIGINT ignored, and a child inherits an ignored signal (Python then
    # installs no Ctrl-C handler): undo that, so the server gets SIGINT as it would from a terminal.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with tempfile.TemporaryDirectory() as tmp:
        model, body = tiny_model(Path(tmp))
        if a.model:
            model = a.model
        rows = []
        for load_on in [v.strip() == "yes" for v in a.cpu_load.split(",")]:
            for name in a.signals.split(","):
                sig = signal.Signals[f"SIG{name.strip()}"]
                runs = []
                for i in range(a.runs):
                    stopped, load, line = one_run(model, body, sig, load_on, a.clients, a.warm, a.replicas)
                    runs.append((stopped, load))
                    print(f"{sig.name} cpu_load={load_on} run {i + 1}: {stopped.seconds:.2f} s, exit "
                          f"{stopped.returncode}, {len(stopped.left_at_exit)} left at exit, all gone after "
                          f"{stopped.gone_after}, answers {dict(load.statuses)}, errors {dict(load.errors)}; "
                          f"{line!r}", flush=True)
                rows.append((sig.name, load_on, runs))
    print("\n| signal | other processes busy on every core | runs | stop s, median | max | exit codes | "
          "processes left at exit (max) | 200 before / after the signal | ≥ 500 | connection errors after |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, load_on, runs in rows:
        secs = [s.seconds for s, _ in runs]
        codes = sorted({str(s.returncode) for s, _ in runs})
        print(f"| {name} | {'yes' if load_on else 'no'} | {len(runs)} | {statistics.median(secs):.1f} | "
              f"{max(secs):.1f} | {', '.join(codes)} | {max(len(s.left_at_exit) for s, _ in runs)} | "
              f"{sum(ld.statuses.get('before 200', 0) for _, ld in runs)} / "
              f"{sum(ld.statuses.get('after 200', 0) for _, ld in runs)} | "
              f"{sum(ld.server_errors() for _, ld in runs)} | "
              f"{sum(ld.count('after', errors=True) for _, ld in runs)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
