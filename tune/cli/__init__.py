"""Command line: `python -m tune <command>`. Each command is one module here (add_parser / run): it parses its
options into typed objects and hands them to the package that does the work; user errors become one line and
exit code 2."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable

from tune.cli import (
    archs,
    cache,
    demo_data,
    evaluate,
    export,
    finalize,
    leaderboard,
    predict,
    report,
    reproduce,
    search,
    serve,
    train,
)
from tune.cli.common import SPACES, builtin_data, fast_allocator
from tune.core import UserError
from tune.core.processes import Interrupted, exit_code

COMMANDS = (demo_data, train, search, archs, leaderboard, finalize, reproduce, predict, evaluate, report, serve, export,
            cache)
__all__ = ["SPACES", "build_parser", "builtin_data", "fast_allocator", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tune", description=__doc__.split("\n")[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    def show(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
        print(f"warning: {message}", file=sys.stderr)

    warnings.showwarning = show  # one readable line, not a source excerpt
    try:
        args = build_parser().parse_args(argv)  # option types check values as they are parsed (common.count)
        fast_allocator()  # as the command starts, before it starts any process (never on import)
        func: Callable[[argparse.Namespace], int] = args.func
        return func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # unwritable results folder, full disk...: results are written atomically, so
        # nothing is half-written; say what and where in one line.
        where = f": {e.filename}" if e.filename else ""
        print(f"error: cannot read or write results ({e.strerror or e}){where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (tune.core.processes.Interrupted): workers are ended
        print(f"interrupted ({e.args[0] if isinstance(e, Interrupted) else 'SIGINT'})", file=sys.stderr)
        return exit_code(e)
