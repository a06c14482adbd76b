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
    _add_study_commands(sub)
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


def _add_study_commands(sub) -> None:
    study = sub.add_parser(
        "study",
        help="plain vs residual twins at several depths (the paper's Figure 6 and Table 6)",
        description="Train plain and residual twins at several depths with one recipe and budget, "
        "then draw Figure 6 and a Table 6 style table from the runs' metrics. Run it again to "
        "skip finished runs and resume an interrupted one. `resnets study report DIR` redraws.",
    )
    study.add_argument("--config", metavar="FILE", help="a study TOML file (default: the bundled degradation study)")
    study.add_argument("--name", help="study folder name under --out (default: the file's name)")
    study.add_argument("--kinds", nargs="+", metavar="KIND", help="plain, resnet, preact_resnet")
    study.add_argument("--depths", nargs="+", type=int, metavar="D", help="depths 6n+2, e.g. 20 32 44 56 110")
    study.add_argument("--seeds", nargs="+", type=int, metavar="S", help="seeds, e.g. 0 1 2")
    study.add_argument("--preset", help="training preset every run starts from")
    study.add_argument("--data", help="dataset (bundled, cifar10, cifar100, folder:PATH)")
    study.add_argument("--data-dir", help="where the dataset lives")
    study.add_argument("--epochs", type=float, help="training budget per run, in epochs")
    study.add_argument("--iters", type=int, help="training budget per run, in steps")
    study.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="any other training setting for every run (repeatable), e.g. --set lr=0.05")
    study.add_argument("--out", default="studies", help="parent folder of study folders (default: studies)")
    study.add_argument("--progress", default="auto", choices=["auto", "bar", "lines", "none"])
    study.set_defaults(run=_cmd_study)
    actions = study.add_subparsers(dest="study_action", metavar="ACTION", parser_class=_Parser)
    report = actions.add_parser("report", help="redraw a study's figure and table from its metrics",
                                description="Redraw figure6.png, table.md/.csv and summary.json "
                                "from the runs' metrics files.")
    report.add_argument("study_dir", metavar="DIR", help="a study folder (holding study.toml)")
    report.set_defaults(run=_cmd_study_report)

    diagnose = sub.add_parser(
        "diagnose",
        help="gradient flow, layer responses and distance from identity",
        description="For each model: the gradient norm reaching each layer at initialisation and "
        "after k training steps, the std of each layer's responses (Figure 7), and for residual "
        "nets how far each unit is from the identity. Writes diagnosis.json and plots.",
    )
    diagnose.add_argument("models", nargs="*", default=["plain56", "resnet56"], metavar="MODEL",
                          help="model names (default: plain56 resnet56)")
    diagnose.add_argument("--data", default="bundled", help="dataset (default: bundled)")
    diagnose.add_argument("--data-dir", help="where the dataset lives")
    diagnose.add_argument("--steps", type=int, default=50, help="training steps between the two measurements")
    diagnose.add_argument("--batch-size", type=int, default=128)
    diagnose.add_argument("--lr", type=float, default=0.1)
    diagnose.add_argument("--seed", type=int, default=0)
    diagnose.add_argument("--out", default="diagnostics", help="output folder (default: diagnostics)")
    diagnose.set_defaults(run=_cmd_diagnose)


def _cmd_study(args) -> int:
    from pathlib import Path

    from resnets.study.degradation import default_study, read_study, run_study, study_from_dict

    given = {key: value for key, value in (("kinds", args.kinds), ("depths", args.depths), ("seeds", args.seeds),
                                           ("preset", args.preset)) if value is not None}
    train = {key: value for key, value in (("data", args.data), ("data_dir", args.data_dir),
                                           ("epochs", args.epochs), ("iters", args.iters)) if value is not None}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set takes KEY=VALUE, got {item!r}")
        train[key.strip()] = value.strip()
    saved = Path(args.out) / (args.name or "") / "study.toml"
    if args.config is None and args.name and saved.is_file() and not given and not train:
        study = read_study(saved)  # continue the saved study as it was defined
    else:
        base = read_study(args.config) if args.config else default_study()
        definition = {**base.__dict__, **given, "train": {**base.train, **train}}
        if args.name:
            definition["name"] = args.name
        if "epochs" in train:
            definition["train"].pop("iters", None)
        if "iters" in train:
            definition["train"].pop("epochs", None)
        study = study_from_dict(definition, source=args.config or "study")
    run_study(study, args.out, progress=args.progress)
    from resnets.study.report import table_markdown, collect

    print(table_markdown(collect(Path(args.out) / study.name)), end="")
    return 0


def _cmd_study_report(args) -> int:
    from resnets.study.report import write_report

    for path in write_report(args.study_dir):
        print(path)
    return 0


def _cmd_diagnose(args) -> int:
    from resnets.study.diagnostics import diagnose, write_diagnosis

    result = diagnose(args.models, data=args.data, data_dir=args.data_dir, steps=args.steps,
                      batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    paths = write_diagnosis(result, args.out)
    print(f"{'model':<14} {'grad first/last (init)':>24} {'(after ' + str(args.steps) + ' steps)':>20} "
          f"{'mean ||F(x)||/||x||':>20}")
    for name, row in result["models"].items():
        distances = row["trained"]["identity_distance"]
        mean = f"{sum(distances) / len(distances):.3f}" if distances else "plain"
        print(f"{name:<14} {row['init']['first_last_ratio']:>24.3g} {row['trained']['first_last_ratio']:>20.3g} "
              f"{mean:>20}")
    for path in paths:
        print(path)
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
