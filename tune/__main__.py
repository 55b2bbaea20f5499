"""`python -m tune`: the command line, owning every process it starts (tune/core/processes.py): the first Ctrl-C
or SIGTERM stops the command, and nothing it started outlives it, even when it is killed."""

from tune.cli import main
from tune.core.processes import own_descendants, stop_on_signals

with own_descendants(), stop_on_signals():
    code = main()
raise SystemExit(code)
