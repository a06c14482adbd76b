"""The parser of every command, and `main`: a `UserError` is one line and exit status 2."""

from __future__ import annotations

import argparse
import sys

from resnets.cli.types import Parser
from resnets.errors import DistributedFailure, UserError, one_line_warnings


def build_parser() -> argparse.ArgumentParser:
    from resnets import __version__
    from resnets.cli import catalog, reports, studies, training

    parser = Parser(prog="resnets", description="Residual networks: build, train, study.")
    parser.add_argument("--version", action="version", version=f"resnets {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    training.add_commands(sub)
    catalog.add_model_commands(sub)
    catalog.add_weights_command(sub)
    catalog.add_data_commands(sub)
    studies.add_commands(sub)
    reports.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # a path the terminal cannot encode is escaped, not a crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    if not (sys.argv[1:] if argv is None else argv):  # a bare `resnets`: what it can do
        parser.print_help()
        return 0
    try:
        return _run(parser, argv)
    except UserError as error:
        if _rank() == 0:  # under torchrun the processes share the settings: one line will do
            print(f"error: {error}", file=sys.stderr)
        return 2
    except DistributedFailure as error:  # not the user's mistake, but not a bug here either
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as interrupted:  # a command's own cleanup has run; say what it left
        print(str(interrupted) or "interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `resnets list | head`: the reader left; not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _run(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    import warnings

    with warnings.catch_warnings():
        warnings.showwarning = one_line_warnings(warnings.showwarning)
        words = sys.argv[1:] if argv is None else list(argv)
        args = parser.parse_args(words)
        args.argv = words[words.index(args.command) + 1:]  # the command's own arguments
        if getattr(args, "runs_models", False):  # set by the commands that train or run networks
            from resnets.train.device import keep_freed_memory

            keep_freed_memory()  # else fresh pages for every step's activations (device.py)
        return int(args.run(args) or 0)


def _rank() -> int:
    """This process's rank among torchrun's (0 outside torchrun)."""
    import os

    text = os.environ.get("RANK", "0") if "WORLD_SIZE" in os.environ else "0"
    return int(text) if text.isdigit() else 0


if __name__ == "__main__":
    raise SystemExit(main())
