"""Every option of `python -m tune` is declared in one place (tune/cli/common.py or the module that owns it).

A flag declared twice drifts: a copy loses its help, its type or its default, and one command then means
something else by it. The parsers are built with a recording add_argument, then walked through argparse's own
structure (every subparser, every group), so a command added later is covered without being listed here."""

from __future__ import annotations

import argparse
import inspect
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

import tune.cli

ARGPARSE = Path(argparse.__file__).resolve()


def parsers(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """The parser and every parser under it, by its prog."""
    yield parser.prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                yield from parsers(sub)


def declared_parser(monkeypatch: pytest.MonkeyPatch) -> tuple[argparse.ArgumentParser, dict[int, str]]:
    """tune.cli.build_parser(), and for each of its actions the file:line of the add_argument call that made it
    (argparse's own --help has none: argparse adds it)."""
    where: dict[int, str] = {}
    add_argument = argparse._ActionsContainer.add_argument  # parsers and groups (mutually exclusive too) alike

    def recording(self: argparse._ActionsContainer, *args: object, **kwargs: object) -> argparse.Action:
        action = add_argument(self, *args, **kwargs)
        caller = inspect.currentframe().f_back  # type: ignore[union-attr]
        if caller is not None and Path(caller.f_code.co_filename).resolve() != ARGPARSE:
            where[id(action)] = f"{Path(caller.f_code.co_filename).name}:{caller.f_lineno}"
        return action

    monkeypatch.setattr(argparse._ActionsContainer, "add_argument", recording)
    return tune.cli.build_parser(), where


def test_each_flag_is_declared_in_one_place(monkeypatch: pytest.MonkeyPatch) -> None:
    parser, where = declared_parser(monkeypatch)
    places: dict[str, set[str]] = defaultdict(set)
    commands: dict[str, set[str]] = defaultdict(set)
    walked = 0
    for prog, p in parsers(parser):
        walked += 1
        for action in p._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert id(action) in where, f"{prog}: {action.option_strings or action.dest} was not made by add_argument"
            for flag in action.option_strings:
                places[flag].add(where[id(action)])
                commands[flag].add(prog.removeprefix(parser.prog).strip() or "(top)")
    assert walked > 10, "the walk found too few parsers: did build_parser's structure change?"
    twice = {flag: sorted(at) for flag, at in places.items() if len(at) > 1}
    assert not twice, "flags declared in more than one place (declare each once, in tune/cli/common.py, with " \
        "the help a parameter where it differs per command):\n" + "\n".join(
            f"  {flag} ({', '.join(sorted(commands[flag]))}): {', '.join(at)}" for flag, at in sorted(twice.items()))


def test_shared_flags_are_shared() -> None:
    """The same flag keeps its type and parsing in every command that takes it (a second declaration could not)."""
    parser = tune.cli.build_parser()
    for argv, key, want in (
            (["train", "--valid-extra", "a", "b"], "valid_extra", [Path("a"), Path("b")]),
            (["search", "--valid-extra", "a"], "valid_extra", [Path("a")]),
            (["finalize", "--valid-extra", "a"], "valid_extra", [Path("a")]),
            (["reproduce", "--valid-extra", "a"], "valid_extra", [Path("a")]),
            (["train", "--skip-bad-images"], "skip_bad_images", True),
            (["search", "--skip-bad-images"], "skip_bad_images", True),
            (["evaluate", "--model", "m.pth", "d", "--skip-bad-images"], "skip_bad_images", True),
            (["serve", "--run", "r", "--arch", "a"], "arch", "a"),
            (["export", "--run", "r", "--arch", "a"], "arch", "a"),
            (["search", "--address", "auto"], "address", "auto"),
            (["serve", "--address", "auto"], "address", "auto"),
            (["train", "--no-cache"], "use_cache", False),
            (["search", "--no-cache"], "use_cache", False),
            (["search"], "use_cache", True)):
        assert getattr(parser.parse_args(argv), key) == want, argv
