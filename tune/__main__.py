"""`python -m tune`: the command line, owning every process it starts (tune/core/processes.py): the first Ctrl-C
or SIGTERM stops the command, and nothing it started outlives it, even when it is killed."""

from tune.core.relaunch import relaunch_without_spaces

relaunch_without_spaces()  # first: Ray cannot start workers from a path with a space (tune/core/relaunch.py)

from tune.cli import main  # noqa: E402
from tune.core.processes import own_descendants, stop_on_signals  # noqa: E402

with own_descendants(), stop_on_signals():
    code = main()
raise SystemExit(code)
