"""Training and what reads its runs: `train`, `eval`, `predict`, `export`, `plot`."""

from __future__ import annotations

import argparse
import sys

from resnets.cli.types import device, integer, positive_int
from resnets.errors import UserError


def add_commands(sub) -> None:
    _add_train(sub)
    _add_eval(sub)
    _add_predict(sub)
    _add_export(sub)
    _add_plot(sub)


def _add_train(sub) -> None:
    from resnets.train.config import list_presets
    from resnets.train.progress import MODES as PROGRESS_MODES

    train = sub.add_parser(
        "train", help="train a model (default: resnet14 on the bundled digits, about half a minute on a CPU)",
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
    train.add_argument("--nproc-per-node", type=positive_int, metavar="N",
                       help="train in N processes on this machine (one per GPU, or a share of "
                       "the CPU cores each), started through PyTorch's elastic launcher; "
                       "--batch-size stays the global batch (for several machines: torchrun)")
    _add_config_flags(train)
    train.set_defaults(run=_cmd_train, runs_models=True)


def _add_config_flags(train) -> None:
    """One flag per Config field, named as its TOML key, with quick's value in its help."""
    from resnets.train.config import FIELDS, field_type, resolve_config

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


def _add_eval(sub) -> None:
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
    evaluate.add_argument("--batch-size", type=positive_int, default=500,
                          help="images per batch (with --crops 10, ten crops each) (default: 500)")
    evaluate.add_argument("--device", type=device, default="auto")
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
    evaluate.add_argument("--resize-size", type=positive_int, metavar="N",
                          help="shorter side before cropping (default: the run's, 256 for 224 "
                          "crops; torchvision's newer weights use 232)")
    evaluate.add_argument("--workers", type=integer(0), metavar="N",
                          help="processes decoding images (default: the run's setting)")
    evaluate.set_defaults(run=_cmd_eval, runs_models=True)


def _add_predict(sub) -> None:
    from resnets.train.device import PRECISIONS
    from resnets.train.engine import ENGINES

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
    predict.add_argument("--top", type=positive_int, help="classes shown (default: 5 with "
                         "--weights, else 3)")
    predict.add_argument("--format", choices=("text", "json", "csv"), default="text",
                         help="text (default), json (a list of {path, top}) or csv (path, "
                         "rank, class, probability)")
    predict.add_argument("--max-pixels", type=positive_int, metavar="N",
                         help="refuse larger images, a guard against decompression bombs "
                         "(default: Pillow's limit, about 89 million)")
    predict.add_argument("--device", type=device, default="cpu")
    predict.add_argument("--precision", choices=PRECISIONS, default="auto",
                         help="as for eval (default: auto)")
    predict.add_argument("--engine", choices=ENGINES, default="auto",
                         help="as for eval (default: auto)")
    predict.set_defaults(run=_cmd_predict, runs_models=True)


def _add_export(sub) -> None:
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


def _add_plot(sub) -> None:
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


def _cmd_train(args) -> int:
    from resnets.train import TrainingInterrupted, fit
    from resnets.train.distributed import session
    from resnets.train.progress import print_summary, run_directory_line
    from resnets.train.runs import new_run_dir

    config, run_dir = _train_config(args)
    if args.print_config:
        print(config.to_toml(), end="")
        return 0
    if args.nproc_per_node is not None:
        return _launch_train(args, config, run_dir)
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


def _launch_train(args, config, run_dir) -> int:
    """`train --nproc-per-node N`: settings checked and the run named here, once, then N
    processes train it (resnets.train.launch); one line at the end if they failed."""
    from resnets.train.distributed import current_world
    from resnets.train.launch import check_processes, launch
    from resnets.train.runs import new_run_dir

    if current_world().distributed:
        raise UserError("--nproc-per-node starts processes of its own: under torchrun, leave "
                        "it out (torchrun's --nproc-per-node says how many)")
    check_processes(args.nproc_per_node, config.batch_size, config.device, config.sync_bn)
    worker_args = _without_option(args.argv, "--nproc-per-node")
    if run_dir is None:  # a new run, named here so that every process and the last line agree
        run_dir = new_run_dir(config).path
        worker_args += ["--out", str(run_dir.parent), "--name", run_dir.name]
    outcome = launch(args.nproc_per_node, worker_args, run_dir, config.threads)
    if outcome.line:
        print(f"error: {outcome.line}", file=sys.stderr)
    return outcome.status


def _without_option(argv: list[str], option: str) -> list[str]:
    """`argv` (train's own arguments) less `option VALUE` and `option=VALUE`."""
    kept, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word == option:
            skip = True
        elif not word.startswith(option + "="):
            kept.append(word)
    return kept


def _train_config(args):
    """The run's settings and, for --resume, its directory (None for a new run: named later),
    refused now, before any data is loaded, where they cannot work."""
    from resnets.models.weights import check_weights
    from resnets.train import resolve_config, resume_config
    from resnets.train.config import FIELDS
    from resnets.train.tensorboard import check_available as check_tensorboard

    overrides = {name: getattr(args, name) for name in FIELDS
                 if getattr(args, name) is not None}
    if args.resume:
        if args.preset or args.config:
            raise UserError("--resume continues a run with its saved settings; it cannot be "
                            "combined with --preset or --config")
        config, run_dir = resume_config(args.resume, overrides), args.resume
    else:
        config, run_dir = resolve_config(_default_preset(args), args.config, overrides), None
        if config.weights is not None:
            check_weights(config.weights, config.model, config.model_args)
    if config.tensorboard and not args.print_config:
        check_tensorboard()
    return config, run_dir


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
    from resnets.train.inference import image_paths, predict_images

    inputs = list(args.inputs)
    if args.weights is not None and _is_checkpoint(inputs[0]):
        raise UserError(f"a checkpoint ({inputs[0]}) and --weights {args.weights} exclude each "
                        f"other: give one of them")
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
    _print_predictions(done, args.format, trained)
    if args.format == "text":  # what ran: the engine and precision
        print(f"({trained.inference_model(args.precision, args.engine).describe()})")
    sys.stdout.flush()
    for error in failed:  # at the end, so a long listing does not hide them
        print(f"warning: skipped {error}", file=sys.stderr)
    return 0

def _print_predictions(done: list, form: str, trained) -> None:
    """Each image's top classes as text, JSON or CSV on stdout."""
    import csv
    import json

    if form == "json":  # index, class (label: folder name, WordNet id) and name apart
        print(json.dumps([{"path": path, "top": [{**trained.class_fields(p.class_index),
                                                  "probability": p[1]} for p in top]}
                          for path, top in done], indent=2))
    elif form == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["path", "rank", "index", "class", "name", "probability"])
        for path, top in done:
            writer.writerows([path, rank, *trained.class_fields(p.class_index).values(),
                              repr(p[1])]  # as json: every digit
                             for rank, p in enumerate(top, 1))
    else:
        for path, top in done:
            print(path)
            width = max(len(name) for name, _ in top)
            for name, probability in top:
                print(f"  {name:<{width}}  {100 * probability:6.2f}%")


def _is_checkpoint(item: str) -> bool:
    """Whether a predict argument names a checkpoint file or a run directory, not images."""
    from pathlib import Path

    from resnets.rundir import RunDir

    path = Path(item)
    return path.suffix == ".pt" or (path.is_dir() and RunDir(path).ours())


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

    from resnets.train.plots import plot_runs

    from resnets.rundir import RunDir

    labels = args.labels.split(",") if args.labels else None
    out = args.out or (RunDir(args.runs[0]).plots if len(args.runs) == 1 else "plots")
    for path in plot_runs(args.runs, out, labels=labels):
        print(path)
    return 0
