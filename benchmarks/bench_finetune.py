"""Fine-tuning ResNet-18 at 224: images/s with the backbone frozen against full fine-tuning.

The model is torchvision's ResNet-18 architecture (what `--weights torchvision` loads),
randomly initialised here: a step's time does not depend on the weights' values. For each mode,
with the `finetune` preset's optimizer (SGD momentum 0.9, weight decay 1e-4, the backbone at
lr x backbone_lr_scale) over the parameters the mode leaves trainable:

  frozen backbone   --freeze backbone: only the new classifier fc trains; the rest runs
                    forward only, in evaluation mode (no gradient, no BN statistics).
  full fine-tuning  --freeze none: every layer trains (the backbone at lr x 0.1).

and two measurements each, as bench_imagenet_train.py:

  model only        training steps on one random batch held in memory: the model's own cost.
  with loader       the same steps fed by `resnets.data.Loader` over generated 224x224 JPEGs
                    (jpeg_tree.py) with augment "random-resized" (the finetune preset's),
                    ImageNet normalisation and --workers worker processes (default 1); the
                    loader's share is wait / (wait + step).

--warmup steps are run first and not timed. The timed steps all lie in one epoch.

    python3 benchmarks/bench_finetune.py                   # batch 32, 8 timed steps per mode
    python3 benchmarks/bench_finetune.py --batch-size 4 --steps 2 --warmup 1 --no-record

Prints a table and appends it, with hardware, torch version, command, date and load average,
to benchmarks/RESULTS.md (unless --no-record).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from harness import Load, add_record_options, record, results_path, time_fed, time_it  # noqa: E402
from jpeg_tree import write_tree  # noqa: E402
from resnets import create_model  # noqa: E402
from resnets.data import Loader, Normalizer, load  # noqa: E402
from resnets.models.summary import count_parameters  # noqa: E402
from resnets.models.weights import imagenet_normalizer  # noqa: E402
from resnets.train import resolve_config  # noqa: E402
from resnets.train import finetune  # noqa: E402
from resnets.train.probe import training_precision  # noqa: E402
from resnets.train.steps import train_step  # noqa: E402

MODES = {"frozen backbone": "backbone", "full fine-tuning": "none"}


def _model(freeze: str, classes: int, device: torch.device):
    """ResNet-18 with a `classes`-way head, `freeze` applied, and the finetune preset's SGD."""
    torch.manual_seed(0)
    config = resolve_config("finetune", overrides={"freeze": freeze})
    model = create_model("resnet18", num_classes=classes)
    finetune.freeze(model, freeze)
    model = model.to(device).to(memory_format=torch.channels_last).train()
    optimizer = finetune.optimizer(model, config, config.lr)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return model, optimizer, trainable


def model_only(freeze: str, classes: int, batch: int, steps: int, warmup: int, device,
               precision: str) -> float:
    """Median seconds of a timed step on one in-memory batch."""
    model, optimizer, _ = _model(freeze, classes, device)
    images = torch.randn(batch, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, classes, (batch,), device=device)

    def step():
        loss, _ = train_step(model, optimizer, images, labels, precision=precision)
        loss.item()  # wait for the device

    return time_it(step, warmup=warmup, runs=steps).median


def with_loader(freeze: str, dataset, batch: int, steps: int, warmup: int, device,
                precision: str, workers: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(seconds waiting for each timed batch, seconds in each timed step)."""
    model, optimizer, _ = _model(freeze, len(dataset.classes), device)
    normalizer = Normalizer.from_state_dict(imagenet_normalizer())
    loader = Loader(dataset, batch, shuffle=True, flip=True, augment="random-resized",
                    normalizer=normalizer, device=device, seed=0, channels_last=True,
                    workers=workers)
    batches = loader.batches(0)

    def step(batch):
        images, labels = batch
        loss, _ = train_step(model, optimizer, images, labels, precision=precision)
        loss.item()  # wait for the device

    waits, steps_s = time_fed(lambda: next(batches), step, warmup=warmup, runs=steps)
    batches.close()
    return waits.values, steps_s.values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per mode (default: 8)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: 2)")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers (default: 1)")
    parser.add_argument("--classes", type=int, default=10,
                        help="class folders of the generated tree (default: 10)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto", help="auto (default), bf16 or fp32")
    parser.add_argument("--dir", help="where to write the JPEGs (default: a temporary folder)")
    add_record_options(parser)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    precision = training_precision(args.precision, device)[0]
    count = args.batch_size * (args.warmup + args.steps)

    header = ("| mode | trainable params | batch | precision | model only img/s | with loader "
              "img/s | step ms | loader share |\n|---|---:|---:|---|---:|---:|---:|---:|")
    rows, rates = [], {}
    load_average = Load.start()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.dir or scratch)
        write_tree(root, count, smallest=(224, 224), largest=(224, 224), classes=args.classes)
        dataset = load(f"folder:{root}", "trainval", augment="random-resized", val_fraction=0)
        print(header, flush=True)
        for label, freeze in MODES.items():
            trainable = _model(freeze, args.classes, device)[2]
            alone = model_only(freeze, args.classes, args.batch_size, args.steps, args.warmup,
                               device, precision)
            waits, steps_s = with_loader(freeze, dataset, args.batch_size, args.steps,
                                         args.warmup, device, precision, args.workers)
            total = sum(waits) + sum(steps_s)
            rates[label] = args.batch_size * len(waits) / total
            rows.append(f"| {label} (--freeze {freeze}) | {trainable:,} | {args.batch_size} | "
                        f"{precision} | {args.batch_size / alone:.1f} | {rates[label]:.1f} | "
                        f"{1000 * statistics.median(steps_s):.0f} | "
                        f"{100 * sum(waits) / total:.1f}% |")
            print(rows[-1], flush=True)
    speedup = rates["frozen backbone"] / rates["full fine-tuning"]
    print(f"frozen backbone / full fine-tuning, with loader: {speedup:.2f}x")

    with torch.device("meta"):
        total_params = count_parameters(create_model("resnet18", num_classes=args.classes))
    record(results_path(args), "bench_finetune: ResNet-18 fine-tuning at 224, frozen backbone "
           "vs full", load=load_average.stop(), device=device, table=[header, *rows],
           notes=[f"frozen backbone / full fine-tuning, with loader: {speedup:.2f}x"], facts=[
               f"- method: resnet18 ({total_params:,} parameters, {args.classes}-way head), "
               f"randomly initialised (the timing does not depend on the weights' values); the "
               f"finetune preset's SGD; {args.warmup} untimed steps, then {args.steps} timed "
               f"steps per mode (median step; loader share = total wait / total time); {count} "
               f"generated 224x224 JPEGs in {args.classes} class folders, augment "
               f"random-resized, ImageNet normalisation, channels_last, {args.workers} loader "
               f"worker(s)"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
