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
    _add_model_commands(sub)
    _add_data_commands(sub)
    return parser


def _add_model_commands(sub) -> None:
    cmd = sub.add_parser("list", help="list registered models with params and FLOPs",
                         description="List registered models: layers, parameters and multiply-adds "
                         "at the paper's input size (3x32x32 CIFAR, 3x224x224 ImageNet).")
    cmd.add_argument("pattern", nargs="?", default="*", help="shell-style pattern, e.g. 'resnet*'")
    cmd.add_argument("--markdown", action="store_true", help="print a Markdown table")
    cmd.set_defaults(run=_cmd_list)

    cmd = sub.add_parser("info", help="one model, laid out like the paper's Table 1",
                         description="Per stage: output size, units x (kernel, channels), parameters "
                         "and multiply-add FLOPs (counted by running the model), then totals.")
    cmd.add_argument("name", help="a registered model name (see `resnets list`)")
    cmd.add_argument("--input-size", type=int, nargs="+", metavar="N",
                     help="H W, C H W or one side (default: the paper's)")
    cmd.add_argument("--num-classes", type=int, help="outputs of the fc layer")
    cmd.add_argument("--in-channels", type=int, help="input channels (1 for grayscale)")
    cmd.add_argument("--shortcut", help="A, B, C or none")
    cmd.add_argument("--depth", type=int, help="for cifar_resnet / cifar_plain / imagenet_resnet")
    cmd.add_argument("--json", action="store_true", help="print the figures as JSON")
    cmd.set_defaults(run=_cmd_info)


def _cmd_list(args) -> int:
    from resnets.models.figures import stored_figures
    from resnets.models.summary import human
    from resnets.models.zoo import get_entry, list_models

    names = list_models(args.pattern)
    if not names:
        raise UserError(f"no model matches {args.pattern!r} (try `resnets list`)")
    figures = stored_figures()
    header = ("name", "family", "input", "params", "mult-adds", "paper error %")
    rows = []
    for name in names:
        entry, row = get_entry(name), figures[name]
        error = "" if entry.paper_error is None else f"{entry.paper_error:.2f}"
        size = "x".join(map(str, row["input_size"]))
        rows.append((name, entry.family, size, f"{row['params']:,}", human(row["macs"]), error))
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join(["---"] * 3 + ["---:"] * 3) + "|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
        return 0
    print(f"{header[0]:<22} {header[1]:<9} {header[2]:<10} {header[3]:>12} {header[4]:>10} {header[5]:>14}")
    for row in rows:
        print(f"{row[0]:<22} {row[1]:<9} {row[2]:<10} {row[3]:>12} {row[4]:>10} {row[5]:>14}")
    return 0


def _cmd_info(args) -> int:
    import json

    from resnets.models.summary import format_info, model_info

    kwargs = {key: value for key, value in (("num_classes", args.num_classes), ("in_channels", args.in_channels),
                                            ("shortcut", args.shortcut), ("depth", args.depth)) if value is not None}
    size = args.input_size[0] if args.input_size and len(args.input_size) == 1 else args.input_size
    info = model_info(args.name, input_size=size, **kwargs)
    print(json.dumps(info, indent=1) if args.json else format_info(info))
    return 0


def _add_data_commands(sub) -> None:
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
    except BrokenPipeError:  # `resnets list | head`: the reader left; not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
