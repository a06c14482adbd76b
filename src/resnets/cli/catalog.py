"""Models and data: `list`, `info`, `weights`, `download`."""

from __future__ import annotations

from resnets.cli.types import positive_int


def add_model_commands(sub) -> None:
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
    cmd.add_argument("--input-size", type=positive_int, nargs="+", metavar="N",
                     help="H W, C H W or one side (default: the paper's)")
    cmd.add_argument("--num-classes", type=positive_int, help="outputs of the fc layer")
    cmd.add_argument("--in-channels", type=positive_int, help="input channels (1 for grayscale)")
    cmd.add_argument("--shortcut", choices=SHORTCUTS, help="shortcut type (paper section 3.3)")
    cmd.add_argument("--depth", type=positive_int,
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


def add_weights_command(sub) -> None:
    cmd = sub.add_parser("weights", help="torchvision's ImageNet weights: accuracy, file, cached?",
                         description="The pretrained weights `--weights torchvision[:v2]` "
                         "names, with torchvision's published ImageNet accuracy and evaluation "
                         "resize, and whether each file is in torch's hub cache (where to put "
                         "it by hand on a machine without network).")
    cmd.set_defaults(run=_cmd_weights)


def _cmd_weights(args) -> int:
    from resnets.models.hub import cache_folder, cached_file
    from resnets.models.weights import releases

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


def add_data_commands(sub) -> None:
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
