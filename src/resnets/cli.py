"""The `resnets` command: parse, call the library, print.

Each subcommand is a `_cmd_<name>(args)` function registered in `_build_parser`. A `UserError`
becomes one line on stderr and exit status 2; Ctrl-C exits 130 after the command's own cleanup.
"""

from __future__ import annotations

import argparse
import sys

from resnets.errors import DistributedFailure, UserError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line and exit 2 (argparse prints usage too), and
    names the subcommand it belongs to."""

    def error(self, message: str):  # noqa: D401 - argparse's signature
        raise UserError(f"{self.prog}: {message} (see `{self.prog} --help`)")

    def parse_known_args(self, args=None, namespace=None):
        # argparse hands a subcommand's unknown arguments up to the top parser, whose error
        # would point to `resnets --help`; the parser that met them reports them instead.
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="resnets", description="Residual networks: build, train, study.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _add_training_commands(sub)
    _add_model_commands(sub)
    _add_weights_command(sub)
    _add_data_commands(sub)
    _add_study_commands(sub)
    _add_trained_run_studies(sub)
    return parser


def _add_model_commands(sub) -> None:
    from resnets.models.blocks import SHORTCUTS

    cmd = sub.add_parser("list", help="list registered models with params and FLOPs",
                         description="List registered models: family, input size, parameters, multiply-adds "
                         "at the paper's input size (3x32x32 CIFAR, 3x224x224 ImageNet) and the paper's error.")
    cmd.add_argument("pattern", nargs="?", default="*", help="shell-style pattern, e.g. 'resnet*'")
    cmd.add_argument("--markdown", action="store_true", help="print a Markdown table")
    cmd.set_defaults(run=_cmd_list)

    cmd = sub.add_parser("info", help="one model, laid out like the paper's Table 1",
                         description="Per stage: output size, units x (kernel, channels), parameters "
                         "and multiply-add FLOPs (counted by running the model), then totals.")
    cmd.add_argument("name", help="a registered model name (see `resnets list`)")
    cmd.add_argument("--input-size", type=_positive_int, nargs="+", metavar="N",
                     help="H W, C H W or one side (default: the paper's)")
    cmd.add_argument("--num-classes", type=_positive_int, help="outputs of the fc layer")
    cmd.add_argument("--in-channels", type=_positive_int, help="input channels (1 for grayscale)")
    cmd.add_argument("--shortcut", choices=SHORTCUTS, help="shortcut type (paper section 3.3)")
    cmd.add_argument("--depth", type=_positive_int,
                     help="for cifar_resnet / cifar_plain / imagenet_resnet")
    cmd.add_argument("--json", action="store_true", help="print the figures as JSON")
    cmd.set_defaults(run=_cmd_info)


def _cmd_list(args) -> int:
    from resnets.models.figures import format_model_table, model_table

    print(format_model_table(model_table(args.pattern), markdown=args.markdown))
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
    from resnets.study.parallel import DEFAULT_JOBS_HELP
    from resnets.train.progress import MODES as PROGRESS_MODES

    study = sub.add_parser(
        "study",
        help="plain vs residual twins at several depths (the paper's Figure 6 and Table 6)",
        description="Train plain and residual twins at several depths with one recipe and budget, "
        "then draw Figure 6 and a Table 6 style table from the runs' metrics. Run it again to "
        "skip finished runs and resume an interrupted one. `resnets study report DIR` redraws.",
    )
    study.add_argument("--config", metavar="FILE", help="a study TOML file, or a bundled study by name: "
                       "degradation (the default), paper-cifar10 (the paper's recipe on CIFAR-10)")
    study.add_argument("--name", help="study folder name under --out (default: the file's name)")
    study.add_argument("--kinds", nargs="+", metavar="KIND", help="plain, resnet, preact_resnet")
    study.add_argument("--depths", nargs="+", type=_positive_int, metavar="D", help="depths 6n+2, e.g. 20 32 44 56 110")
    study.add_argument("--seeds", nargs="+", type=int, metavar="S", help="seeds, e.g. 0 1 2")
    study.add_argument("--preset", help="training preset every run starts from")
    study.add_argument("--data", help="dataset (bundled, cifar10, cifar100, folder:PATH)")
    study.add_argument("--data-dir", help="where the dataset lives")
    study.add_argument("--epochs", type=float, help="training budget per run, in epochs")
    study.add_argument("--iters", type=int, help="training budget per run, in steps")
    study.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="any other training setting for every run (repeatable), e.g. --set lr=0.05")
    study.add_argument("--out", default="studies", help="parent folder of study folders (default: studies)")
    study.add_argument("--progress", default="auto", choices=PROGRESS_MODES)
    study.add_argument("--jobs", type=_positive_int, metavar="N",
                       help="train N runs at once, each in a process of its own with its share "
                       "of the CPU cores (and a GPU each, round robin, when there are several); "
                       f"their output goes to DIR/logs/ (default: {DEFAULT_JOBS_HELP})")
    study.add_argument("--shard", type=_shard, metavar="I/N",
                       help="be worker I of N (I from 1) sharing the study folder, e.g. on N "
                       "machines: take every N-th run first, then help with any run nobody is "
                       "training; the last worker to finish writes the report. Combines with "
                       "--jobs")
    study.set_defaults(run=_cmd_study, runs_models=True)
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
    diagnose.add_argument("--steps", type=_integer(0), default=50, help="training steps between the two measurements (default: %(default)s)")
    diagnose.add_argument("--batch-size", type=_integer(2), default=128, help="images per step and in the probe batch, at least 2 for BatchNorm (default: %(default)s)")
    diagnose.add_argument("--lr", type=_positive_float, default=0.1, help="SGD learning rate, momentum 0.9, wd 1e-4 (default: %(default)s)")
    diagnose.add_argument("--seed", type=_seed, default=0, help="initialisation and shuffling seed (default: %(default)s)")
    diagnose.add_argument("--out", default="diagnostics", help="output folder (default: diagnostics)")
    diagnose.add_argument("--threads", type=_positive_int, metavar="N",
                          help="CPU threads for torch (default: torch's, every core)")
    diagnose.set_defaults(run=_cmd_diagnose, runs_models=True)


def _add_trained_run_studies(sub) -> None:
    """lesion and landscape: studies of networks already trained (run directories)."""
    from resnets.data.dataset import SPLITS

    lesion = sub.add_parser(
        "lesion",
        help="test error with units removed from a trained run (Veit et al. 2016)",
        description="The test error of a trained network with each unit removed in turn (a "
        "residual unit keeps only its shortcut, a plain unit that keeps its shape becomes the "
        "identity, one that changes shape cannot be removed) and with k random units removed "
        "for k = 1, 2, ... (mean and spread over random subsets), against the intact network. "
        "Writes lesion.json, units.csv, random.csv and Veit et al.'s Figures 3 and 5.",
    )
    lesion.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (or a checkpoint file)")
    lesion.add_argument("--split", default="test", choices=SPLITS,
                        help="images the error is measured on (default: test)")
    lesion.add_argument("--images", type=_positive_int, help="use this many images of the split, drawn with "
                        "--seed (default: all)")
    lesion.add_argument("--subsets", type=_positive_int, default=5, metavar="K",
                        help="random subsets of units per number removed (default: %(default)s)")
    lesion.add_argument("--max-removed", type=_positive_int, metavar="M",
                        help="largest number of random units removed (default: every removable unit)")
    lesion.add_argument("--recalibrate-bn", action="store_true",
                        help="re-estimate BatchNorm statistics on training images for every lesioned "
                        "network (changes the answer; default: the trained statistics)")
    lesion.add_argument("--calibration-images", type=_positive_int, default=1000,
                        help="training images for --recalibrate-bn (default: %(default)s)")
    _add_measurement_options(lesion)
    lesion.add_argument("--out", help="output folder (default: RUN_DIR/lesion)")
    lesion.set_defaults(run=_cmd_lesion, runs_models=True)

    landscape = sub.add_parser(
        "landscape",
        help="loss along random filter-normalised directions (Li et al. 2018)",
        description="The loss and error of trained networks at theta + a*d1 (+ b*d2) for random "
        "directions normalised filter by filter (BN parameters and biases fixed, directions "
        "seeded), on a fixed subset of training images: 1-D curves overlaid, or 2-D contour "
        "plots side by side on one colour scale, and landscape.json. Each grid point is saved "
        "as it is done: run the same command again to resume an interrupted scan.",
    )
    landscape.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (or checkpoint files)")
    landscape.add_argument("--dims", type=int, default=1, choices=[1, 2], help="directions (default: 1)")
    landscape.add_argument("--points", type=_odd_points, help="grid points per direction, odd (default: 41 for "
                           "1-D, 15 for 2-D)")
    landscape.add_argument("--span", type=_positive_float, default=1.0,
                           help="the grid covers [-span, span] per direction (default: %(default)s)")
    landscape.add_argument("--images", type=_positive_int, default=500, help="images of the split (default: %(default)s)")
    landscape.add_argument("--split", default="train", choices=SPLITS,
                           help="images the loss is measured on (default: train)")
    _add_measurement_options(landscape)
    landscape.add_argument("--out", default="landscape", help="output folder (default: landscape)")
    landscape.set_defaults(run=_cmd_landscape, runs_models=True)


def _add_measurement_options(parser) -> None:
    from resnets.study.trained import PRECISIONS
    from resnets.train.progress import MODES as PROGRESS_MODES

    parser.add_argument("--seed", type=_seed, default=0, help="seed of the random draws (default: %(default)s)")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="fp32, or bf16 autocast (default: fp32)")
    parser.add_argument("--device", type=_device, default="auto",
                        help="auto (CUDA if present), cpu, cuda, cuda:N")
    parser.add_argument("--batch-size", type=_positive_int, default=500,
                        help="images per forward pass (default: %(default)s)")
    parser.add_argument("--progress", default="auto", choices=PROGRESS_MODES,
                        help="progress display on stderr (default: auto)")


def _cmd_study(args) -> int:
    from resnets.study.degradation import all_finished, resolve_study, run_study
    from resnets.train import TrainingInterrupted

    changes = {key: value for key, value in (("kinds", args.kinds), ("depths", args.depths),
                                             ("seeds", args.seeds), ("preset", args.preset))
               if value is not None}
    train = {key: value for key, value in (("data", args.data), ("data_dir", args.data_dir),
                                           ("epochs", args.epochs), ("iters", args.iters))
             if value is not None}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set takes KEY=VALUE, got {item!r}")
        train[key.strip()] = value.strip()
    study = resolve_study(args.config, name=args.name, root=args.out, changes=changes,
                          train=train)
    try:
        study_dir = run_study(study, args.out, progress=args.progress, jobs=args.jobs,
                              shard=args.shard)
    except TrainingInterrupted as interrupted:
        print(str(interrupted), file=sys.stderr)
        return 128 + interrupted.signal_number
    if all_finished(study_dir, study):  # else other workers still train: the last one reports
        print((study_dir / "report" / "table.md").read_text(), end="")  # what run_study wrote
    return 0


def _cmd_study_report(args) -> int:
    from resnets.study.report import write_report

    for path in write_report(args.study_dir):
        print(path)
    return 0


def _cmd_diagnose(args) -> int:
    from resnets.atomic import writable_folder
    from resnets.study.diagnostics import check_settings, diagnose, write_diagnosis

    check_settings(args.models, args.steps, args.batch_size, args.lr, args.seed)
    writable_folder(args.out)  # before the models are trained, not after
    result = diagnose(args.models, data=args.data, data_dir=args.data_dir, steps=args.steps,
                      batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      threads=args.threads)
    paths = write_diagnosis(result, args.out)
    print(f"{'model':<14} {'grad first/last (init)':>24} {'(after ' + str(args.steps) + ' steps)':>20} "
          f"{'mean ||F(x)||/||shortcut(x)||':>30}")
    for name, row in result["models"].items():
        distances = row["trained"]["identity_distance"]
        mean = f"{sum(distances) / len(distances):.3f}" if distances else "plain"
        print(f"{name:<14} {row['init']['first_last_ratio']:>24.3g} {row['trained']['first_last_ratio']:>20.3g} "
              f"{mean:>30}")
    for path in paths:
        print(path)
    return 0


def _cmd_lesion(args) -> int:
    from pathlib import Path

    from resnets.study.lesioning import lesion, write_lesion

    result = lesion(args.run_dir, split=args.split, images=args.images, subsets=args.subsets,
                    max_removed=args.max_removed, recalibrate_bn=args.recalibrate_bn,
                    calibration_images=args.calibration_images, seed=args.seed,
                    precision=args.precision, device=args.device, batch_size=args.batch_size,
                    progress=args.progress)
    paths = write_lesion(result, args.out or Path(result["run_dir"]) / "lesion")
    base = result["baseline"]["err"]
    print(f"{result['run']} ({result['model']}) on {result['images']} {result['split']} images: "
          f"{base:.2f}% error with no unit removed")
    print(f"{'unit':<10} {'error':>8} {'change':>8}")
    for row in result["units"]:
        change = "cannot be removed" if row["err"] is None else f"{row['err']:7.2f}% {row['delta_err']:+7.2f}"
        print(f"{row['name']:<10} {change}")
    print(f"{'removed':<10} {'mean':>8} {'std':>7}")
    for row in result["random"]:
        print(f"{row['k']:<10} {row['err_mean']:7.2f}% {row['err_std']:6.2f}")
    for path in paths:
        print(path)
    return 0


def _cmd_landscape(args) -> int:
    from resnets.study.loss_landscape import landscape, write_landscape

    result = landscape(args.run_dirs, dims=args.dims, points=args.points, span=args.span,
                       images=args.images, split=args.split, seed=args.seed,
                       precision=args.precision, device=args.device, batch_size=args.batch_size,
                       out_dir=args.out, progress=args.progress)
    paths = write_landscape(result, args.out)
    print(f"{'run':<20} {'loss at 0':>10} {'err at 0':>9} {'max loss':>10} {'max err':>8}")
    for run in result["runs"]:
        flat = [v for row in run["loss"] for v in (row if isinstance(row, list) else [row])]
        errs = [v for row in run["err"] for v in (row if isinstance(row, list) else [row])]
        print(f"{run['name']:<20} {run['origin']['loss']:>10.4f} {run['origin']['err']:>8.2f}% "
              f"{max(flat):>10.4g} {max(errs):>7.2f}%")
    for path in paths:
        print(path)
    return 0


# ------------------------------------------------------ train, eval, predict, export, plot


def _add_training_commands(sub) -> None:
    from resnets.train.config import FIELDS, field_type, list_presets, resolve_config
    from resnets.train.progress import MODES as PROGRESS_MODES

    train = sub.add_parser(
        "train", help="train a model (default: resnet20 on the bundled digits, minutes on a CPU)",
        description="Train a model into a run directory (config.json, metrics.jsonl, "
        "checkpoints/, summary.json, plots/). Settings come from a preset (default: quick; "
        "finetune with --weights torchvision), "
        "then --config FILE.toml, then flags; TOML keys and flags share their names "
        "(--batch-size is batch_size).")
    train.add_argument("--preset", help=f"named preset: {', '.join(list_presets())} "
                       "(default: quick; finetune with --weights torchvision[:v2]; none with "
                       "--config)")
    train.add_argument("--config", metavar="FILE.toml", help="TOML file of settings")
    train.add_argument("--resume", metavar="RUN_DIR",
                       help="continue an interrupted run exactly where it stopped")
    train.add_argument("--progress", choices=PROGRESS_MODES, default="auto",
                       help="live bar on a terminal, one line per epoch otherwise (auto)")
    train.add_argument("--print-config", action="store_true",
                       help="print the resolved settings as TOML (a file --config reads) and exit")
    defaults = resolve_config("quick").to_dict()  # what a flag left out means
    for name, field in FIELDS.items():
        flag = "--" + name.replace("_", "-")
        help_text = field.metadata["help"].replace("%", "%%")
        if field.metadata.get("choices"):
            help_text += f" ({' | '.join(field.metadata['choices'])})"
        help_text += f" [quick: {defaults[name]}]".replace("%", "%%")
        kind, _ = field_type(name)
        if name == "compile":  # --compile, --compile auto, --no-compile
            train.add_argument(flag, dest=name, nargs="?", const=True, default=None,
                               choices=field.metadata["choices"], metavar="auto",
                               help=help_text)
            train.add_argument("--no-compile", dest=name, action="store_const", const=False,
                               help="never compile (the same as --compile false)")
        elif kind is bool:
            train.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                               default=None, help=help_text)
        else:
            metavar = field.metadata["metavar"] or {
                int: "N", float: "X", list: "N,N", dict: "KEY=VALUE,..."}.get(
                kind, "DIR" if name.endswith("_dir") else "NAME")
            train.add_argument(flag, dest=name, default=None, metavar=metavar, help=help_text)
    train.set_defaults(run=_cmd_train, runs_models=True)
    _add_checkpoint_commands(sub)


def _add_checkpoint_commands(sub) -> None:
    """eval, predict, export, plot: the commands that read what training wrote. (Long but
    flat: one declaration per flag of four commands.)"""
    from resnets.data.dataset import SPLITS
    from resnets.data.views import CROPS
    from resnets.train.device import PRECISIONS
    from resnets.train.engine import ENGINES

    evaluate = sub.add_parser("eval", help="top-1/top-5 and per-class error of a checkpoint",
                              description="Evaluate a checkpoint (or a run directory's last "
                              "checkpoint) on a dataset split.")
    evaluate.add_argument("checkpoint", nargs="?", help="checkpoint file or run directory (or "
                          "--model and --weights)")
    _add_weights_options(evaluate)
    evaluate.add_argument("--data", help="dataset (default: the one it was trained on; with "
                          "--weights: needed, e.g. folder:PATH of ImageNet)")
    evaluate.add_argument("--data-dir", help="where datasets are stored")
    evaluate.add_argument("--split", default="test", choices=SPLITS, help="(default: test)")
    evaluate.add_argument("--batch-size", type=_positive_int, default=500,
                          help="images per batch (with --crops 10, ten crops each) (default: 500)")
    evaluate.add_argument("--device", type=_device, default="auto")
    evaluate.add_argument("--precision", choices=PRECISIONS, default="auto",
                          help="auto: a run's checkpoint in the precision the run evaluated "
                          "in; other weights in bf16 where it measured faster here, else "
                          "fp32; BatchNorm is folded into the convolutions either way "
                          "(default: auto)")
    evaluate.add_argument("--engine", choices=ENGINES, default="auto",
                          help="auto: onnxruntime where it measured faster here at this batch "
                          "size (CPU, with pip install 'resnets[onnx]'), else PyTorch "
                          "(default: auto)")
    evaluate.add_argument("--crops", type=int, choices=CROPS, default=1,
                          help="1: the centre crop; 10: the paper's 10-crop testing (four "
                          "corners and centre, and their flips; softmax averaged). For models "
                          "trained with --augment paper or random-resized (default: 1)")
    evaluate.add_argument("--resize-size", type=_positive_int, metavar="N",
                          help="shorter side before cropping (default: the run's, 256 for 224 "
                          "crops; torchvision's newer weights use 232)")
    evaluate.add_argument("--workers", type=_integer(0), metavar="N",
                          help="processes decoding images (default: the run's setting)")
    evaluate.set_defaults(run=_cmd_eval, runs_models=True)

    predict = sub.add_parser("predict", help="classify image files with a checkpoint or "
                             "pretrained weights",
                             usage="resnets predict [options] CHECKPOINT IMAGE [IMAGE ...]\n"
                             "       resnets predict [options] --model NAME --weights WEIGHTS "
                             "IMAGE [IMAGE ...]",
                             description="Print the most likely classes of each image. Images "
                             "of any size and mode are converted to the model's channels, "
                             "resized and centre-cropped to its input size, and normalised "
                             "as in training (or as the weights expect). Unreadable images are "
                             "skipped and reported at the end; the exit status is 2 only when "
                             "none could be classified.")
    predict.add_argument("inputs", nargs="+", metavar="IMAGE",
                         help="a checkpoint file or run directory (not with --weights), then "
                         "image files, folders (the images in them) or quoted glob patterns "
                         "such as 'photos/*.jpg'")
    _add_weights_options(predict)
    predict.add_argument("--top", type=_positive_int, help="classes shown (default: 5 with "
                         "--weights, else 3)")
    predict.add_argument("--format", choices=("text", "json", "csv"), default="text",
                         help="text (default), json (a list of {path, top}) or csv (path, "
                         "rank, class, probability)")
    predict.add_argument("--max-pixels", type=_positive_int, metavar="N",
                         help="refuse larger images, a guard against decompression bombs "
                         "(default: Pillow's limit, about 89 million)")
    predict.add_argument("--device", type=_device, default="cpu")
    predict.add_argument("--precision", choices=PRECISIONS, default="auto",
                         help="as for eval (default: auto)")
    predict.add_argument("--engine", choices=ENGINES, default="auto",
                         help="as for eval (default: auto)")
    predict.set_defaults(run=_cmd_predict, runs_models=True)

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
    export.add_argument("--force", action="store_true",
                        help="replace an existing FILE (never a checkpoint of a run)")
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


def _add_weights_options(parser) -> None:
    parser.add_argument("--model", metavar="NAME", help="with --weights: the model to build "
                        "(resnet18, resnet34, resnet50, resnet101, resnet152 for torchvision's)")
    parser.add_argument("--weights", metavar="WEIGHTS", help="instead of a checkpoint: "
                        "torchvision (torchvision's ImageNet weights, v1), torchvision:v2, or a "
                        "state-dict file; downloaded once into torch's hub cache")


def _add_weights_command(sub) -> None:
    cmd = sub.add_parser("weights", help="torchvision's ImageNet weights: accuracy, file, cached?",
                         description="The pretrained weights `--weights torchvision[:v2]` "
                         "names, with torchvision's published ImageNet accuracy and evaluation "
                         "resize, and whether each file is in torch's hub cache (where to put "
                         "it by hand on a machine without network).")
    cmd.set_defaults(run=_cmd_weights)


def _cmd_weights(args) -> int:
    from resnets.models.weights import cache_folder, cached_file, releases

    print(f"{'model':<10} {'--weights':<15} {'torchvision':<14} {'top-1':>7} {'top-5':>7} "
          f"{'resize':>6}  {'file':<24} cached")
    for entry in releases():
        spec = "torchvision" if entry.version == "v1" else entry.spec
        print(f"{entry.model:<10} {spec:<15} {entry.torchvision_name:<14} {entry.acc1:>7.3f} "
              f"{entry.acc5:>7.3f} {entry.resize_size:>6}  {entry.file_name:<24} "
              f"{'yes' if cached_file(entry).is_file() else 'no'}")
    print(f"accuracy: torchvision's published ImageNet validation figures (%, centre "
          f"{releases()[0].crop_size} crop); cache: {cache_folder()}")
    return 0


# argparse types: a flag's value is refused in one line naming the flag before any file is
# read. (train's flags are checked by its Config instead, the one owner of those settings.)


def _integer(low: int, high: int | None = None):
    """An integer from `low` (to `high`)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"in {low}..{high}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value

    return parse


_positive_int = _integer(1)


def _positive_float(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def _odd_points(text: str) -> int:
    value = _integer(3)(text)
    if value % 2 == 0:
        raise argparse.ArgumentTypeError(f"must be odd (the trained weights sit at the centre), "
                                         f"got {value}")
    return value


def _seed(text: str) -> int:
    from resnets.train.config import MAX_SEED

    return _integer(0, MAX_SEED)(text)


def _shard(text: str):
    from resnets.study.parallel import parse_shard

    try:
        return parse_shard(text)
    except UserError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _device(text: str) -> str:
    from resnets.train.device import check_device_name

    try:
        return check_device_name(text)
    except UserError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _cmd_train(args) -> int:
    from resnets.models.weights import check_weights
    from resnets.train import TrainingInterrupted, fit, resolve_config, resume_config
    from resnets.train.config import FIELDS
    from resnets.train.distributed import session
    from resnets.train.loop import new_run_dir
    from resnets.train.tensorboard import check_available as check_tensorboard
    from resnets.train.progress import print_summary, run_directory_line

    overrides = {name: getattr(args, name) for name in FIELDS
                 if getattr(args, name) is not None}
    if args.resume:
        if args.preset or args.config:
            raise UserError("--resume continues a run with its saved settings; it cannot be "
                            "combined with --preset or --config")
        config, run_dir = resume_config(args.resume, overrides), args.resume
        if args.print_config:
            print(config.to_toml(), end="")
            return 0
    else:
        config = resolve_config(_default_preset(args), args.config, overrides)
        if config.weights is not None:  # refused now, not after the data is loaded
            check_weights(config.weights, config.model, config.model_args)
        if args.print_config:
            print(config.to_toml(), end="")
            return 0
    if config.tensorboard:
        check_tensorboard()
    # Under torchrun every process runs this; rank 0 names the run and prints.
    with session(config.device, config.dist_timeout) as (world, _):
        if not args.resume:
            run_dir = new_run_dir(config, world).path
        try:
            summary = fit(config, run_dir, resume=bool(args.resume), progress=args.progress)
        except TrainingInterrupted as interrupted:
            if world.main:
                print(str(interrupted), file=sys.stderr)
            return 128 + interrupted.signal_number
    if not world.main:
        return 0
    if args.progress != "none":
        print_summary(summary, run_dir)
    else:  # quiet, but a script still learns where the run went
        print(run_directory_line(run_dir))
    return 0


def _default_preset(args) -> str | None:
    """The preset a new run starts from: --preset; else none under --config; else finetune
    for torchvision's weights (a model trained on ImageNet, fine-tuned gently on photos); else
    quick."""
    from resnets.models.weights import torchvision_version

    if args.preset or args.config is not None:
        return args.preset
    return "finetune" if args.weights and torchvision_version(args.weights) else "quick"


def _trained_from_args(args, images: list[str] | None = None):
    """The model `eval` or `predict` uses: a checkpoint or run directory, or --weights (with
    --model for torchvision's)."""
    from resnets.train.inference import load_trained, load_weights_for_inference

    checkpoint = getattr(args, "checkpoint", None)
    if args.weights is None:
        if args.model is not None:
            raise UserError(f"--model {args.model} goes with --weights (a checkpoint knows its "
                            f"model): give --weights, or leave out --model")
        if checkpoint is None:
            raise UserError(f"{args.command} needs a checkpoint or run directory, or --model "
                            f"NAME --weights torchvision")
        return load_trained(checkpoint, device=args.device)
    if checkpoint is not None:
        raise UserError(f"give a checkpoint ({checkpoint}) or --weights {args.weights}, not both")
    if args.model is not None:
        from resnets.models.zoo import get_entry

        get_entry(args.model)  # an unknown name before anything is read
    if args.command == "eval" and args.data is None:
        raise UserError(f"--weights {args.weights}: give --data, e.g. folder:PATH (an ImageNet "
                        f"tree, train/ and val/ with one folder per WordNet id)")
    return load_weights_for_inference(args.model, args.weights, device=args.device)


def _cmd_eval(args) -> int:
    from resnets.train.inference import evaluate_checkpoint

    trained = _trained_from_args(args)
    result = evaluate_checkpoint(trained, data=args.data, data_dir=args.data_dir,
                                 split=args.split, batch_size=args.batch_size,
                                 precision=args.precision, crops=args.crops,
                                 resize_size=args.resize_size, workers=args.workers,
                                 engine=args.engine)
    crops = f", {args.crops} crops" if args.crops != 1 else ""
    print(f"{trained.checkpoint['model']} on {result['data']} {args.split} ({result['n']} "
          f"images{crops}): top-1 error {result['err']:.2f}%, top-5 error "
          f"{result['err_top5']:.2f}%, loss {result['loss']:.4f} ({result['precision']})")
    labels = [trained.label(i) for i in range(len(trained.classes))]
    width = max(len("class"), *(len(label) for label in labels))
    print(f"{'class':<{width}}  error")
    for label, err in zip(labels, result["per_class_err"]):
        print(f"{label:<{width}}  {'-' if err is None else f'{err:.2f}%'}")
    skipped = result["skipped_images"]
    if skipped:
        print(f"warning: skipped {len(skipped)} unreadable image{'s' if len(skipped) > 1 else ''} "
              f"(e.g. {skipped[0]})", file=sys.stderr)
    return 0


def _cmd_predict(args) -> int:
    import csv
    import json

    from resnets.train.inference import image_paths, predict_images

    inputs = list(args.inputs)
    if args.weights is None:
        args.checkpoint = inputs.pop(0)
        if not inputs:
            raise UserError("predict needs a checkpoint (or run directory) and image files, or "
                            "--model NAME --weights torchvision and image files")
    trained = _trained_from_args(args)
    paths = image_paths(inputs)
    top = args.top or (5 if args.weights is not None else 3)
    results = predict_images(trained, paths, top=top, return_errors=True,
                             max_pixels=args.max_pixels, precision=args.precision,
                             engine=args.engine)
    done = [(str(path), top) for path, top in zip(paths, results) if not isinstance(top, UserError)]
    failed = [error for error in results if isinstance(error, UserError)]
    if not done:
        if len(failed) == 1:
            raise failed[0]
        raise UserError(f"none of the {len(failed)} images could be classified: {failed[0]} "
                        f"(and {len(failed) - 1} more)")
    if args.format == "json":
        print(json.dumps([{"path": path, "top": [{"class": name, "probability": probability}
                                                 for name, probability in top]}
                          for path, top in done], indent=2))
    elif args.format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["path", "rank", "class", "probability"])
        for path, top in done:
            writer.writerows([path, rank, name, repr(probability)]  # as json: every digit
                             for rank, (name, probability) in enumerate(top, 1))
    else:
        for path, top in done:
            print(path)
            width = max(len(name) for name, _ in top)
            for name, probability in top:
                print(f"  {name:<{width}}  {100 * probability:6.2f}%")
        print(f"({trained.inference_model(args.precision, args.engine).describe()})")
    sys.stdout.flush()
    for error in failed:  # at the end, so a long listing does not hide them
        print(f"warning: skipped {error}", file=sys.stderr)
    return 0


def _cmd_export(args) -> int:
    from pathlib import Path

    from resnets.export import check_destination, export_onnx, export_torchvision
    from resnets.train.checkpoint import resolve_checkpoint_path

    if not args.onnx and not args.torchvision:
        raise UserError("export needs --onnx FILE and/or --torchvision FILE")
    if args.onnx and args.torchvision and Path(args.onnx).absolute() == Path(args.torchvision).absolute():
        raise UserError(f"--onnx and --torchvision both name {args.onnx}: give two file names")
    resolve_checkpoint_path(args.checkpoint)  # a missing checkpoint is named before the destinations
    for out in filter(None, (args.torchvision, args.onnx)):  # both, before either is written
        check_destination(out, args.checkpoint, overwrite=args.force)
    if args.torchvision:
        result = export_torchvision(args.checkpoint, args.torchvision, overwrite=args.force)
        print(f"wrote {result['path']} ({result['tensors']} tensors; load with torchvision's "
              f"model of the same name, num_classes={result['num_classes']})")
    if args.onnx:
        result = export_onnx(args.checkpoint, args.onnx, check=not args.no_check,
                             overwrite=args.force)
        checked = ("not checked" if result["max_abs_diff"] is None else
                   f"onnxruntime matches PyTorch to {result['max_abs_diff']:.2g}")
        print(f"wrote {result['path']} (input: float pixels in [0, 255], shape (N, "
              f"{', '.join(map(str, result['input_shape']))}); {checked})")
    return 0


def _cmd_plot(args) -> int:
    from pathlib import Path

    from resnets.train.plots import plot_runs

    from resnets.rundir import RunDir

    labels = args.labels.split(",") if args.labels else None
    out = args.out or (RunDir(args.runs[0]).plots if len(args.runs) == 1 else "plots")
    for path in plot_runs(args.runs, out, labels=labels):
        print(path)
    return 0


def _version() -> str:
    from resnets import __version__

    return f"resnets {__version__}"


def _one_line_warnings(python_show):
    """A `warnings.showwarning` that prints our own warnings as one line, `warning: ...`, and
    anybody else's as `python_show` does."""
    from pathlib import Path

    def show(message, category, filename, lineno, file=None, line=None):
        if Path(__file__).parent in Path(filename).parents:
            print(f"warning: {message}", file=file or sys.stderr)
        else:
            python_show(message, category, filename, lineno, file, line)

    return show


def main(argv: list[str] | None = None) -> int:
    import warnings

    for stream in (sys.stdout, sys.stderr):  # a path the terminal cannot encode is escaped, not a crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    parser = _build_parser()
    if not (sys.argv[1:] if argv is None else argv):  # a bare `resnets`: what it can do
        parser.print_help()
        return 0
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warnings(warnings.showwarning)
            args = parser.parse_args(argv)
            if getattr(args, "runs_models", False):  # set by the commands that train or run
                from resnets.train.device import keep_freed_memory  # networks

                keep_freed_memory()  # else fresh pages for every step's activations (device.py)
            return int(args.run(args) or 0)
    except UserError as error:
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


if __name__ == "__main__":
    raise SystemExit(main())
