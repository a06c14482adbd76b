"""The `resnets` command: parse, call the library, print.

Each subcommand is a `_cmd_<name>(args)` function registered in `_build_parser`. A `UserError`
becomes one line on stderr and exit status 2; Ctrl-C exits 130 after the command's own cleanup.
"""

from __future__ import annotations

import argparse
import sys

from resnets.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line and exit 2 (argparse prints usage too)."""

    def error(self, message: str):  # noqa: D401 - argparse's signature
        raise UserError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="resnets", description="Residual networks: build, train, study.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    download = sub.add_parser(
        "download",
        help="fetch a CIFAR archive, check its MD5 and extract it",
        description="Fetch the official CIFAR python-version archive into DIR, check its MD5, "
        "and extract it there (atomic: a failure leaves nothing partial behind).",
    )
    download.add_argument("dataset", choices=["cifar10", "cifar100"], help="which archive")
    download.add_argument("--to", required=True, metavar="DIR", help="folder to put it in (then use --data-dir DIR)")
    download.add_argument("--url", default=None, help="a mirror of the official archive (same MD5)")
    download.set_defaults(run=_cmd_download)
    return parser


def _cmd_download(args) -> int:
    from resnets.data import download

    folder = download(args.dataset, args.to, url=args.url)
    print(f"{args.dataset}: {folder}")
    return 0


def _version() -> str:
    from resnets import __version__

    return f"resnets {__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
        return int(args.run(args) or 0)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
