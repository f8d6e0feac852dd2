"""A command that explains itself: every `prefect-evolink` command has a description, every
argument has help, and every option that takes a value says its default.

The parsers are the ones `prefect-evolink` itself builds, reached the way a user reaches them:
`main([COMMAND])` with `ArgumentParser.parse_args` intercepted, so `simulator` and `deploy`
(which hand their arguments to parsers of their own) are walked too, and a command added later
is walked without this file changing. Each `--help` is also printed, as a user would see it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
from collections.abc import Iterator
from typing import Any

import pytest

from prefect_evolink.cli import main


class _Parsed(Exception):
    """Raised instead of parsing: carries the parser `main` was about to use."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__(parser.prog)
        self.parser = parser


def parser_of(argv: list[str]) -> argparse.ArgumentParser:
    """The parser `prefect-evolink ARGV…` parses its arguments with."""

    def intercept(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        raise _Parsed(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", intercept)
        try:
            main(argv)
        except _Parsed as parsed:
            return parsed.parser
    raise AssertionError(f"prefect-evolink {' '.join(argv)} parsed nothing")


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def commands() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every command and its parser: the top level, then each subcommand. A subcommand whose
    arguments another parser reads (`simulator`, `deploy`) is represented by that parser."""
    top = parser_of([])
    yield "prefect-evolink", top
    for name, sub in _subcommands(top).items():
        own = parser_of([name])  # the top-level parser again, unless another one reads them
        yield name, sub if own.prog == top.prog else own


COMMANDS = dict(commands())


def test_every_command_is_walked() -> None:
    """The walk finds the commands the docs name, and the delegated ones' own parsers."""
    assert {"demo", "campaign", "simulator", "deploy", "report", "spend"} <= set(COMMANDS)
    assert COMMANDS["simulator"].prog == "prefect-evolink simulator"
    assert COMMANDS["deploy"].prog == "prefect-evolink deploy"


def problems(parser: argparse.ArgumentParser) -> list[str]:
    """What the parser's help leaves unexplained."""
    found = [] if (parser.description or "").strip() else ["no description"]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        name = "/".join(action.option_strings) or action.dest
        if not action.help or action.help == argparse.SUPPRESS or not action.help.strip():
            found.append(f"{name}: no help")
            continue
        takes_a_value = action.nargs != 0  # not a flag (store_true, store_const, count)
        if action.option_strings and takes_a_value:
            text = formatter._expand_help(action)
            if "default" not in text.lower():
                found.append(f"{name}: its help does not say its default ({action.default!r})")
    return found


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_a_description_and_every_argument_help(command: str) -> None:
    parser = COMMANDS[command]
    assert problems(parser) == [], f"prefect-evolink {command} --help"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_help_prints(command: str) -> None:
    """`prefect-evolink [COMMAND] --help` exits 0 with its usage (a stray `%` in a help text
    would make argparse raise instead)."""
    argv = [] if command == "prefect-evolink" else [command]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as stop:
        main([*argv, "--help"])
    assert stop.value.code == 0
    assert out.getvalue().startswith("usage: prefect-evolink")


def test_the_walk_would_see_an_option_without_help_or_default() -> None:
    """The check itself: it fails a parser that leaves things unexplained."""
    parser = argparse.ArgumentParser(prog="x")
    parser.add_argument("--bare", default=3)
    parser.add_argument("--silent-default", default=3, help="some number")
    parser.add_argument("--told", default=3, help="some number (default %(default)s)")
    parser.add_argument("--flag", action="store_true", help="a switch")
    assert problems(parser) == [
        "no description",
        "--bare: no help",
        "--silent-default: its help does not say its default (3)",
    ]


def test_approval_timeout_says_what_it_is_its_unit_and_its_default() -> None:
    from prefect_evolink.flows.campaign_review import DEFAULT_APPROVAL_TIMEOUT_SECONDS

    [action] = [
        a for a in COMMANDS["campaign"]._actions if "--approval-timeout" in a.option_strings
    ]
    text = COMMANDS["campaign"]._get_formatter()._expand_help(action)
    assert action.default == DEFAULT_APPROVAL_TIMEOUT_SECONDS
    assert "reviewer" in text and "seconds" in text
    assert f"default {DEFAULT_APPROVAL_TIMEOUT_SECONDS}" in text


def test_the_defaults_written_out_in_help_are_the_flows_own() -> None:
    """Help that names a default the parser cannot import cheaply (it would import Prefect)
    writes it out; these are the values the flow really uses."""
    from prefect_evolink.flows.campaign import DEFAULT_SELECTOR

    campaign = COMMANDS["campaign"]
    [selector] = [a for a in campaign._actions if "--selector" in a.option_strings]
    assert f"(default: {DEFAULT_SELECTOR})" in (selector.help or "")
