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
    _add_training_commands(sub)
    return parser


# ------------------------------------------------------ train, eval, predict, export, plot


def _add_training_commands(sub) -> None:
    from resnets.train.config import FIELDS, list_presets

    train = sub.add_parser(
        "train", help="train a model (default: resnet20 on the bundled digits, ~2 min on CPU)",
        description="Train a model into a run directory (config.json, metrics.jsonl, "
        "checkpoints/, summary.json, plots/). Settings come from a preset (default: quick), "
        "then --config FILE.toml, then flags; TOML keys and flags share their names "
        "(--batch-size is batch_size).")
    train.add_argument("--preset", help=f"named preset: {', '.join(list_presets())} "
                       "(default: quick, unless --config is given)")
    train.add_argument("--config", metavar="FILE.toml", help="TOML file of settings")
    train.add_argument("--resume", metavar="RUN_DIR",
                       help="continue an interrupted run exactly where it stopped")
    train.add_argument("--progress", choices=("auto", "bar", "lines", "none"), default="auto",
                       help="live bar on a terminal, one line per epoch otherwise (auto)")
    for name, field in FIELDS.items():
        flag = "--" + name.replace("_", "-")
        help_text = field.metadata["help"].replace("%", "%%")
        if field.metadata.get("choices"):
            help_text += f" ({' | '.join(field.metadata['choices'])})"
        if field.type == "bool":
            train.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                               default=None, help=help_text)
        else:
            metavar = {"int": "N", "float": "X", "list": "N,N", "dict": "KEY=VALUE,..."}.get(
                field.type.replace(" | None", ""), "NAME")
            train.add_argument(flag, dest=name, default=None, metavar=metavar, help=help_text)
    train.set_defaults(run=_cmd_train)

    evaluate = sub.add_parser("eval", help="top-1/top-5 and per-class error of a checkpoint",
                              description="Evaluate a checkpoint (or a run directory's last "
                              "checkpoint) on a dataset split.")
    evaluate.add_argument("checkpoint", help="checkpoint file or run directory")
    evaluate.add_argument("--data", help="dataset (default: the one it was trained on)")
    evaluate.add_argument("--data-dir", help="where datasets are stored")
    evaluate.add_argument("--split", default="test", choices=("train", "val", "trainval",
                                                              "test"), help="(default: test)")
    evaluate.add_argument("--batch-size", type=_positive_int, default=500)
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--precision", choices=("bf16", "fp32"), default="fp32")
    evaluate.set_defaults(run=_cmd_eval)

    predict = sub.add_parser("predict", help="classify image files with a checkpoint",
                             description="Print the most likely classes of each image. Images "
                             "of any size and mode are converted to the model's channels, "
                             "resized and centre-cropped to its input size, and normalised "
                             "as in training.")
    predict.add_argument("checkpoint", help="checkpoint file or run directory")
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    predict.add_argument("--top", type=_positive_int, default=3, help="classes shown (3)")
    predict.add_argument("--device", default="cpu")
    predict.set_defaults(run=_cmd_predict)

    export = sub.add_parser("export", help="export a checkpoint to ONNX or torchvision format",
                            description="--onnx FILE: an ONNX graph taking float pixels in "
                            "[0, 255] (normalisation included), checked against onnxruntime "
                            "(pip install 'resnets[onnx]'). --torchvision FILE: a state dict "
                            "torchvision's model of the same name loads strictly "
                            "(resnet18/34/50/101/152).")
    export.add_argument("checkpoint", help="checkpoint file or run directory")
    export.add_argument("--onnx", metavar="FILE")
    export.add_argument("--torchvision", metavar="FILE")
    export.add_argument("--no-check", action="store_true",
                        help="skip the onnxruntime comparison")
    export.set_defaults(run=_cmd_export)

    plot = sub.add_parser("plot", help="draw loss/error against iterations for runs",
                          description="Redraw loss.png and error.png from metrics.jsonl "
                          "(training dashed, validation/test solid); several runs are "
                          "overlaid in one figure.")
    plot.add_argument("runs", nargs="+", metavar="RUN_DIR")
    plot.add_argument("--out", help="output folder (default: RUN_DIR/plots for one run, "
                      "./plots for several)")
    plot.add_argument("--labels", help="comma-separated legend labels, one per run")
    plot.set_defaults(run=_cmd_plot)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _default_run_name(config) -> str:
    import re
    from datetime import datetime

    data = re.sub(r"[^A-Za-z0-9_.-]+", "-", config.data.data.replace("folder:", "folder-"))
    data = data.strip("-.") or "data"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{config.model.model}-{data[-40:]}-{stamp}"


def _cmd_train(args) -> int:
    from pathlib import Path

    from resnets.train import Config, TrainingInterrupted, fit, load_checkpoint, resolve_config
    from resnets.train.config import FIELDS
    from resnets.train.metrics import print_summary

    overrides = {name: getattr(args, name) for name in FIELDS
                 if getattr(args, name) is not None}
    if args.resume:
        if args.preset or args.config:
            raise UserError("--resume continues a run with its saved settings; it cannot be "
                            "combined with --preset or --config")
        run_dir = Path(args.resume)
        if not run_dir.is_dir():
            raise UserError(f"cannot resume: run directory not found: {run_dir}")
        saved = Config.from_dict(load_checkpoint(run_dir)["config"]).flat()
        if "epochs" in overrides or "iters" in overrides:
            saved.pop("epochs"), saved.pop("iters")
        config = resolve_config(overrides={**saved, **overrides})
    else:
        preset = args.preset or ("quick" if args.config is None else None)
        config = resolve_config(preset, args.config, overrides)
        run_dir = Path(config.out) / (config.name or _default_run_name(config))
    try:
        summary = fit(config, run_dir, resume=bool(args.resume), progress=args.progress)
    except TrainingInterrupted as interrupted:
        print(str(interrupted), file=sys.stderr)
        return 130
    if args.progress != "none":
        print_summary(summary, run_dir)
    return 0


def _cmd_eval(args) -> int:
    from resnets.train.inference import evaluate_checkpoint, load_trained

    trained = load_trained(args.checkpoint, device=args.device)
    result = evaluate_checkpoint(trained, data=args.data, data_dir=args.data_dir,
                                 split=args.split, batch_size=args.batch_size,
                                 precision=args.precision)
    print(f"{trained.checkpoint['model']} on {result['data']} {args.split} ({result['n']} "
          f"images): top-1 error {result['err']:.2f}%, top-5 error {result['err_top5']:.2f}%, "
          f"loss {result['loss']:.4f}")
    width = max(len(name) for name in trained.classes)
    print(f"{'class':<{width}}  error")
    for name, err in zip(trained.classes, result["per_class_err"]):
        print(f"{name:<{width}}  {'-' if err is None else f'{err:.2f}%'}")
    return 0


def _cmd_predict(args) -> int:
    from resnets.train.inference import load_trained, predict_images

    trained = load_trained(args.checkpoint, device=args.device)
    for path, top in zip(args.images, predict_images(trained, args.images, top=args.top)):
        print(path)
        width = max(len(name) for name, _ in top)
        for name, probability in top:
            print(f"  {name:<{width}}  {100 * probability:6.2f}%")
    return 0


def _cmd_export(args) -> int:
    from resnets.export import export_onnx, export_torchvision

    if not args.onnx and not args.torchvision:
        raise UserError("export needs --onnx FILE and/or --torchvision FILE")
    if args.torchvision:
        result = export_torchvision(args.checkpoint, args.torchvision)
        print(f"wrote {result['path']} ({result['tensors']} tensors; load with torchvision's "
              f"model of the same name, num_classes={result['num_classes']})")
    if args.onnx:
        result = export_onnx(args.checkpoint, args.onnx, check=not args.no_check)
        checked = ("not checked" if result["max_abs_diff"] is None else
                   f"onnxruntime matches PyTorch to {result['max_abs_diff']:.2g}")
        print(f"wrote {result['path']} (input: float pixels in [0, 255], shape (N, "
              f"{', '.join(map(str, result['input_shape']))}); {checked})")
    return 0


def _cmd_plot(args) -> int:
    from pathlib import Path

    from resnets.study.plots import plot_runs

    labels = args.labels.split(",") if args.labels else None
    out = args.out or (Path(args.runs[0]) / "plots" if len(args.runs) == 1 else "plots")
    for path in plot_runs(args.runs, out, labels=labels):
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


if __name__ == "__main__":
    raise SystemExit(main())
