"""ResNet-18 and ResNet-50 training images/s at 224 on this machine, and the loader's share of a
step when one DataLoader worker decodes and crops the JPEGs.

For each model (1,000 classes, channels_last, the precision `auto` picks here):

  model only      training steps (forward, fp32 cross-entropy, backward, SGD) on one random
                  batch held in memory: the model's own cost.
  with loader     the same steps fed by `resnets.data.Loader` over generated JPEGs of
                  ImageNet's typical size (jpeg_tree.py) with augment "paper" (random scale
                  and crop, flip, PCA lighting) and --workers worker processes (default 1).
                  Each step is split into the time spent waiting for the batch and the time
                  in the step; the loader's share is wait / (wait + step).

--warmup steps are run first and not timed (they include the workers' start). The timed steps
all lie in one epoch, so no epoch boundary (a new set of workers) falls among them.

    python3 benchmarks/bench_imagenet_train.py                   # resnet18, resnet50, batch 32
    python3 benchmarks/bench_imagenet_train.py --models resnet18 --batch-size 4 --steps 2 --warmup 1 --no-record

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
from resnets.data import Loader, load  # noqa: E402
from resnets.train.probe import training_precision  # noqa: E402
from resnets.train.steps import train_step  # noqa: E402


def _model(name: str, device: torch.device):
    torch.manual_seed(0)
    model = create_model(name, num_classes=1000).to(device).train()
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    return model, optimizer


def model_only(name: str, batch: int, steps: int, warmup: int, device, precision: str) -> float:
    """Median seconds of a timed step on one in-memory batch."""
    model, optimizer = _model(name, device)
    images = torch.randn(batch, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (batch,), device=device)

    def step():
        loss, _ = train_step(model, optimizer, images, labels, precision=precision)
        loss.item()  # wait for the device

    return time_it(step, warmup=warmup, runs=steps).median


def with_loader(name: str, dataset, batch: int, steps: int, warmup: int, device, precision: str,
                workers: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(seconds waiting for each timed batch, seconds in each timed step)."""
    model, optimizer = _model(name, device)
    loader = Loader(dataset, batch, shuffle=True, flip=True, augment="paper", normalizer=None,
                    device=device, seed=0, channels_last=True, workers=workers)
    batches = loader.batches(0)

    def step(batch):
        images, labels = batch
        loss, _ = train_step(model, optimizer, images, labels % 1000, precision=precision)
        loss.item()  # wait for the device

    waits, steps_s = time_fed(lambda: next(batches), step, warmup=warmup, runs=steps)
    batches.close()
    return waits.values, steps_s.values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,resnet50")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="timed steps (default: 8)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: 2)")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers (default: 1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto", help="auto (default), bf16 or fp32")
    parser.add_argument("--dir", help="where to write the JPEGs (default: a temporary folder)")
    add_record_options(parser)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    precision = training_precision(args.precision, device)[0]
    count = args.batch_size * (args.warmup + args.steps)

    header = ("| model | batch | precision | model only img/s | with loader img/s | wait per step ms "
              "| step ms | loader share |\n|---|---:|---|---:|---:|---:|---:|---:|")
    rows = []
    load_average = Load.start()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.dir or scratch)
        write_tree(root, count)
        dataset = load(f"folder:{root}", "trainval", augment="paper", val_fraction=0)
        print(header, flush=True)
        for name in args.models.split(","):
            alone = model_only(name, args.batch_size, args.steps, args.warmup, device, precision)
            waits, steps_s = with_loader(name, dataset, args.batch_size, args.steps, args.warmup, device,
                                         precision, args.workers)
            total = sum(waits) + sum(steps_s)
            rows.append(f"| {name} | {args.batch_size} | {precision} | {args.batch_size / alone:.1f} | "
                        f"{args.batch_size * len(waits) / total:.1f} | {1000 * statistics.median(waits):.0f} | "
                        f"{1000 * statistics.median(steps_s):.0f} | {100 * sum(waits) / total:.1f}% |")
            print(rows[-1], flush=True)

    record(results_path(args), f"bench_imagenet_train: ResNet training images/s at 224, loader "
           f"share with {args.workers} worker", load=load_average.stop(), device=device,
           table=[header, *rows], facts=[
               f"- method: {args.warmup} untimed steps, then {args.steps} timed steps (median "
               f"step; loader share = total wait / total time); {count} generated JPEGs 400x350 "
               f"to 500x375, augment paper, channels_last, 1,000 classes"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
