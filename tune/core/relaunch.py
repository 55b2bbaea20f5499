"""A command run from a Python environment under a path with white space re-executes itself through a link
without any.

Ray 2.60 starts Tune's and Serve's workers through `bash -c` with the interpreter's and its own worker script's
paths unquoted: from a .venv in "~/my projects/deepfake-tune" every worker dies at start (bash takes the path up
to the space, "…/my", as the program) and a search waits forever. Python keeps the path it was started by
(sys.prefix is the link's, not the target's), so the same environment reached through a symlink whose path has
no space gives Ray paths it can run. The command re-executes at once, before anything else: same process id,
same arguments, same packages; its children (Ray's workers, subprocesses started with sys.executable) inherit
the link.

The link lives in a folder of this user's own in the temporary directory, mode 0700 and checked, so nobody else
can point it at another environment. Where that cannot be made, nothing happens, and Ray's start refuses in one
line (tune.search.cluster.check_worker_paths).
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
import tempfile
from pathlib import Path

GUARD = "TUNE_RELAUNCHED"  # set in the re-executed process: never a second time, whatever happens


def spaced(path: str) -> bool:
    return any(c.isspace() for c in path)


def link_to(prefix: Path) -> Path | None:
    """A symlink to `prefix` at a path without white space, or None where none can be made safely."""
    base = Path(tempfile.gettempdir()) / f"deepfake-tune-{os.getuid()}"
    if spaced(str(base)):
        return None
    try:
        base.mkdir(mode=0o700, exist_ok=True)
        st = base.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            return None  # not ours alone: someone else could swap the link
        link = base / hashlib.sha256(str(prefix).encode()).hexdigest()[:16]
        if not (link.is_symlink() and os.readlink(link) == str(prefix)):
            tmp = base / f".{link.name}.{os.getpid()}"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(prefix)
            os.replace(tmp, link)  # atomic: two commands starting at once both find a whole link
    except OSError:
        return None
    return link


def relaunch_without_spaces() -> None:
    """Re-execute this process through a space-free link to its environment when sys.prefix has white space."""
    if os.name != "posix" or os.environ.get(GUARD) or not spaced(sys.prefix):
        return
    prefix, exe = Path(sys.prefix), Path(sys.executable)
    if not exe.is_relative_to(prefix):
        return  # an interpreter outside its environment: nothing to re-point
    link = link_to(prefix)
    if link is None:
        return
    os.environ[GUARD] = "1"
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    new = link / exe.relative_to(prefix)
    os.execv(new, [str(new), *sys.orig_argv[1:]])


def pytest_addoption(parser: object) -> None:
    """As a pytest plugin (pyproject's addopts: -p tune.core.relaunch), loaded before pytest captures any output:
    the test session re-executes like a command, so the Ray searches it runs in its own process can start workers."""
    relaunch_without_spaces()
