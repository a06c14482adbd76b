"""Studies: `study` (Figure 6, Table 6), `diagnose`, and the studies of trained runs, `lesion`
and `landscape`."""

from __future__ import annotations

import sys

from resnets.cli.types import Parser, integer, odd_points, positive_float, positive_int, seed, shard
from resnets.cli.types import device as device_name
from resnets.errors import UserError


def add_commands(sub) -> None:
    _add_study(sub)
    _add_diagnose(sub)
    _add_lesion(sub)
    _add_landscape(sub)


def _add_study(sub) -> None:
    study = sub.add_parser(
        "study",
        help="plain vs residual twins at several depths (the paper's Figure 6 and Table 6)",
        description="Train plain and residual twins at several depths with one recipe and budget, "
        "then draw Figure 6 and a Table 6 style table from the runs' metrics. Run it again to "
        "skip finished runs and resume an interrupted one. `resnets study report DIR` redraws.",
    )
    _add_study_settings(study)
    study.set_defaults(run=_cmd_study, runs_models=True)
    actions = study.add_subparsers(dest="study_action", metavar="ACTION", parser_class=Parser)
    report = actions.add_parser("report", help="redraw a study's figure and table from its metrics",
                                description="Redraw figure6.png, table.md/.csv and summary.json "
                                "from the runs' metrics files.")
    report.add_argument("study_dir", metavar="DIR", help="a study folder (holding study.toml)")
    report.set_defaults(run=_cmd_study_report)


def _add_study_settings(study) -> None:
    from resnets.study.parallel import DEFAULT_JOBS_HELP
    from resnets.train.progress import MODES as PROGRESS_MODES

    study.add_argument("--config", metavar="FILE", help="a study TOML file, or a bundled study by name: "
                       "degradation (the default), paper-cifar10 (the paper's recipe on CIFAR-10)")
    study.add_argument("--name", help="study folder name under --out (default: the file's name)")
    study.add_argument("--kinds", nargs="+", metavar="KIND", help="plain, resnet, preact_resnet")
    study.add_argument("--depths", nargs="+", type=positive_int, metavar="D", help="depths 6n+2, e.g. 20 32 44 56 110")
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
    study.add_argument("--jobs", type=positive_int, metavar="N",
                       help="train N runs at once, each in a process of its own with its share "
                       "of the CPU cores (and a GPU each, round robin, when there are several); "
                       f"their output goes to DIR/logs/ (default: {DEFAULT_JOBS_HELP})")
    study.add_argument("--shard", type=shard, metavar="I/N",
                       help="be worker I of N (I from 1) sharing the study folder, e.g. on N "
                       "machines: take every N-th run first, then help with any run nobody is "
                       "training; the last worker to finish writes the report. Combines with "
                       "--jobs")


def _add_diagnose(sub) -> None:
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
    diagnose.add_argument("--steps", type=integer(0), default=50, help="training steps between the two measurements (default: %(default)s)")
    diagnose.add_argument("--batch-size", type=integer(2), default=128, help="images per step and in the probe batch, at least 2 for BatchNorm (default: %(default)s)")
    diagnose.add_argument("--lr", type=positive_float, default=0.1, help="SGD learning rate, momentum 0.9, wd 1e-4 (default: %(default)s)")
    diagnose.add_argument("--seed", type=seed, default=0, help="initialisation and shuffling seed (default: %(default)s)")
    diagnose.add_argument("--out", default="diagnostics", help="output folder (default: diagnostics)")
    diagnose.add_argument("--threads", type=positive_int, metavar="N",
                          help="CPU threads for torch (default: torch's, every core)")
    diagnose.set_defaults(run=_cmd_diagnose, runs_models=True)


def _add_lesion(sub) -> None:
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
    lesion.add_argument("--images", type=positive_int, help="use this many images of the split, drawn with "
                        "--seed (default: all)")
    lesion.add_argument("--subsets", type=positive_int, default=5, metavar="K",
                        help="random subsets of units per number removed (default: %(default)s)")
    lesion.add_argument("--max-removed", type=positive_int, metavar="M",
                        help="largest number of random units removed (default: every removable unit)")
    lesion.add_argument("--recalibrate-bn", action="store_true",
                        help="re-estimate BatchNorm statistics on training images for every lesioned "
                        "network (changes the answer; default: the trained statistics)")
    lesion.add_argument("--calibration-images", type=positive_int, default=1000,
                        help="training images for --recalibrate-bn (default: %(default)s)")
    _add_measurement_options(lesion)
    lesion.add_argument("--out", help="output folder (default: RUN_DIR/lesion)")
    lesion.set_defaults(run=_cmd_lesion, runs_models=True)


def _add_landscape(sub) -> None:
    from resnets.data.dataset import SPLITS

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
    landscape.add_argument("--points", type=odd_points, help="grid points per direction, odd (default: 41 for "
                           "1-D, 15 for 2-D)")
    landscape.add_argument("--span", type=positive_float, default=1.0,
                           help="the grid covers [-span, span] per direction (default: %(default)s)")
    landscape.add_argument("--images", type=positive_int, default=500, help="images of the split (default: %(default)s)")
    landscape.add_argument("--split", default="train", choices=SPLITS,
                           help="images the loss is measured on (default: train)")
    _add_measurement_options(landscape)
    landscape.add_argument("--out", default="landscape", help="output folder (default: landscape)")
    landscape.set_defaults(run=_cmd_landscape, runs_models=True)


def _add_measurement_options(parser) -> None:
    from resnets.study.trained import PRECISIONS
    from resnets.train.progress import MODES as PROGRESS_MODES

    parser.add_argument("--seed", type=seed, default=0, help="seed of the random draws (default: %(default)s)")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="fp32, or bf16 autocast (default: fp32)")
    parser.add_argument("--device", type=device_name, default="auto",
                        help="auto (CUDA if present), cpu, cuda, cuda:N")
    parser.add_argument("--batch-size", type=positive_int, default=500,
                        help="images per forward pass (default: %(default)s)")
    parser.add_argument("--progress", default="auto", choices=PROGRESS_MODES,
                        help="progress display on stderr (default: auto)")


def _cmd_study(args) -> int:
    from resnets.cli.reports import study_page_refresher
    from resnets.study.degradation import all_finished, resolve_study, run_study
    from resnets.train import TrainingInterrupted

    changes = {key: value for key, value in (("kinds", args.kinds), ("depths", args.depths),
                                             ("seeds", args.seeds), ("preset", args.preset))
               if value is not None}
    train = {key: value for key, value in (("data", args.data), ("data_dir", args.data_dir),
                                           ("epochs", args.epochs), ("iters", args.iters))
             if value is not None}
    train.update(_settings(args.set))
    study = resolve_study(args.config, name=args.name, root=args.out, changes=changes,
                          train=train)
    refresh = study_page_refresher()
    try:
        study_dir = run_study(study, args.out, progress=args.progress, jobs=args.jobs,
                              shard=args.shard, on_run_done=refresh)
    except TrainingInterrupted as interrupted:
        print(str(interrupted), file=sys.stderr)
        return 128 + interrupted.signal_number
    finished = all_finished(study_dir, study)  # before the page: a shard may finish meanwhile
    refresh(study_dir)
    if finished:  # else other workers still train: the last one reports
        print((study_dir / "report" / "table.md").read_text(), end="")  # what run_study wrote
    return 0


def _settings(items: list[str]) -> dict[str, str]:
    """`--set KEY=VALUE` flags as a dict."""
    settings = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set takes KEY=VALUE, got {item!r}")
        settings[key.strip()] = value.strip()
    return settings


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
    from resnets.study.lesioning import lesion, lesion_folder, write_lesion

    out = lesion_folder(args.run_dir, args.out)  # writable, before minutes of measuring
    result = lesion(args.run_dir, split=args.split, images=args.images, subsets=args.subsets,
                    max_removed=args.max_removed, recalibrate_bn=args.recalibrate_bn,
                    calibration_images=args.calibration_images, seed=args.seed,
                    precision=args.precision, device=args.device, batch_size=args.batch_size,
                    progress=args.progress)
    paths = write_lesion(result, out)
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
