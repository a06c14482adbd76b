"""The command line's surface: every command and, for each, its options and arguments.

`tests/test_cli_surface.py` compares it with `cli_surface.json`, recorded before the command line
became a package, so that a reorganisation keeps every command and option. A change to the
surface is deliberate: record it again with `python3 tests/cli_surface.py > tests/cli_surface.json`.
"""

from __future__ import annotations

import argparse
import json


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # noqa: SLF001 - argparse keeps its parsers nowhere public
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            return dict(action.choices)
    return {}


def _arguments(parser: argparse.ArgumentParser) -> dict[str, dict]:
    arguments = {}
    for action in parser._actions:  # noqa: SLF001
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            continue
        name = ", ".join(action.option_strings) or action.dest
        arguments[name] = {"help": action.help, "choices": sorted(map(str, action.choices or [])),
                           "nargs": str(action.nargs), "default": repr(action.default)}
    return arguments


def surface(parser: argparse.ArgumentParser, prefix: str = "resnets") -> dict[str, dict]:
    """Each command's full name (`resnets study report`) -> its arguments."""
    commands = {prefix: _arguments(parser)}
    for name, child in _subparsers(parser).items():
        commands.update(surface(child, f"{prefix} {name}"))
    return commands


if __name__ == "__main__":
    from resnets.cli import build_parser

    print(json.dumps(surface(build_parser()), indent=1, sort_keys=True))
