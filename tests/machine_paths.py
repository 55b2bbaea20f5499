"""Absolute paths of the machine a fixture was made on: found (the test) and taken out (the tool).

A fixture is a run folder an earlier version wrote. It holds the paths of the machine that made it, also
inside Ray's pickles (tuner.pkl, searcher-state-*.pkl: the Optuna storage URL, the experiment's storage
path). A test that passes only where that folder still exists passes on one machine only, so
tests/test_fixtures.py fails on any such path, and this tool rewrites them to a relative placeholder:

    python tests/machine_paths.py tests/fixtures/NAME /tmp/where/it/was/made [/tmp/ray ...]

Text files get a plain replacement. Pickles (known by content, not by name) are rewritten opcode by opcode:
a string that holds a path is written again with its new length, and the optional FRAME opcodes (whose
lengths would no longer hold) are dropped, so the pickle loads exactly as before, paths apart.
"""

from __future__ import annotations

import pickletools
import re
import struct
import sys
from pathlib import Path

PLACEHOLDER = "made-elsewhere"
# The top folders where a machine keeps work and temporary files. Checked in binary files too: a path
# under one of them, right after a character that cannot end a relative path.
MACHINE_PATH = re.compile(rb"(?<![\w.~-])/(?:tmp|root|home|work|Users|var|private|mnt|opt|srv|scratch)/[\w.-]+")
STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"}


def machine_paths(data: bytes) -> list[str]:
    """Every absolute path of a machine in `data` (text or binary)."""
    return sorted({m.group().decode("latin-1") for m in MACHINE_PATH.finditer(data)})


def _unicode(text: str) -> bytes:
    raw = text.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE: any protocol from 1 on reads it


def rewrite_pickle(data: bytes, old: str, new: str) -> bytes:
    ops = list(pickletools.genops(data))
    out = bytearray()
    for i, (op, arg, pos) in enumerate(ops):
        end = ops[i + 1][2] if i + 1 < len(ops) else len(data)
        if op.name == "FRAME":  # frames only group opcodes for reading ahead; a pickle without them is valid
            continue
        if op.name in STRING_OPS and isinstance(arg, str) and old in arg:
            out += _unicode(arg.replace(old, new))
        else:
            out += data[pos:end]
    return bytes(out)


def relocate(folder: Path, prefixes: list[str]) -> list[Path]:
    """Rewrite every file under `folder` that names one of `prefixes`; returns the files changed."""
    changed = []
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = before = f.read_bytes()
        for old in prefixes:
            new = PLACEHOLDER + "/" + old.strip("/").replace("/", "-")
            if data[:1] == b"\x80":  # a pickle, whatever its name (Ray's search_gen_state-*.json is one)
                data = rewrite_pickle(data, old, new)
            elif b"\0" not in data:
                data = data.replace(old.encode(), new.encode())
        if data != before:
            f.write_bytes(data)
            changed.append(f)
    return changed


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python tests/machine_paths.py FIXTURE_FOLDER PREFIX [PREFIX ...]")
    for path in relocate(Path(sys.argv[1]), sys.argv[2:]):
        print(f"rewrote {path}")
