"""Start commands with a marker in their environment, and end exactly those processes later.

Ray daemonises some of its processes, so a process group is not enough; every process a
command starts inherits its environment, so a unique variable finds them all (and only them).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def marked_env(**extra: str) -> tuple[dict[str, str], str]:
    mark = uuid.uuid4().hex
    env = {**os.environ, "TUNE_TEST_MARK": mark, "PYTHONUNBUFFERED": "1", "TUNE_OFFLINE": "1", **extra}
    return env, mark


def pids_with_mark(mark: str) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            if f"TUNE_TEST_MARK={mark}".encode() in (d / "environ").read_bytes().split(b"\0"):
                out.append(int(d.name))
        except OSError:
            continue
    return out


def kill_marked(mark: str, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL, every process carrying `mark` (Ray agents can ignore SIGTERM)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids_with_mark(mark):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + timeout / 2
        while time.time() < deadline and pids_with_mark(mark):
            time.sleep(0.2)


def tune_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tune", *args]


def run(cmd: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def result_rows(path: Path) -> list[dict]:
    """The lines of a trial's result.json as Ray wrote them (replays after a restore included)."""
    import json

    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def listeners(pids: list[int]) -> set[tuple[str, int, int]]:
    """(local IP, port, pid) of every listening TCP socket of `pids` (from /proc)."""
    owner: dict[str, int] = {}
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                if target.startswith("socket:["):
                    owner[target[8:-1]] = pid
        except OSError:
            continue
    out: set[tuple[str, int, int]] = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A" and f[9] in owner:  # 0A = LISTEN
                hex_ip, hex_port = f[1].split(":")
                out.add((_ip(hex_ip, width), int(hex_port, 16), owner[f[9]]))
    return out


def listening_addresses(pids: list[int]) -> set[str]:
    """Local IP addresses on which any of `pids` has a listening TCP socket."""
    return {ip for ip, _, _ in listeners(pids)}


def _ip(hex_ip: str, width: int) -> str:
    import ipaddress

    raw = bytes.fromhex(hex_ip)
    if width == 8:
        return str(ipaddress.IPv4Address(raw[::-1]))
    # /proc stores IPv6 as four little-endian 32-bit words
    addr = ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
    return str(addr.ipv4_mapped or addr)
