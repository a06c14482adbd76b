"""Training throughput (images/s): bf16 autocast + channels_last against plain fp32.

One training step is what `resnets train` runs: forward (under autocast for bf16), fp32
cross-entropy, backward, SGD with momentum and weight decay. Inputs are random CIFAR-shaped
batches (3x32x32, 10 classes) already in memory, so the figure is the model's cost alone.
Each configuration runs `--warmup` untimed steps, then `--runs` timed runs of `--steps` steps;
the table reports the median run (and the min-max spread) and appends itself, with the
hardware, torch version, command, date and load average, to benchmarks/RESULTS.md (unless
--no-record).

    python3 benchmarks/bench_train.py                      # resnet20, resnet56 at batch 128
    python3 benchmarks/bench_train.py --models resnet20 --steps 3 --runs 1 --no-record   # smoke test
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from harness import (Load, Spread, add_record_options, record, results_path,  # noqa: E402
                     synchronizer, time_it)

from resnets import create_model  # noqa: E402
from resnets.train.device import autocast  # noqa: E402

# The first two are the comparison the table is for (speed-up = second / first); the others
# separate the two effects. --modes picks columns.
MODES = {"fp32": ("fp32", False), "bf16+channels_last": ("bf16", True),
         "fp32+channels_last": ("fp32", True), "bf16": ("bf16", False)}


def training_step(model_name: str, precision: str, channels_last: bool, *, batch_size: int,
                  device: torch.device, image_size: int = 32):
    """One training step of `model_name` on a fixed random batch, as a function: forward (under
    autocast for bf16), fp32 cross-entropy, backward, SGD with momentum and weight decay."""
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=10, in_channels=3).to(device).train()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    images = torch.randn(batch_size, 3, image_size, image_size, device=device).contiguous(
        memory_format=memory_format)
    labels = torch.randint(0, 10, (batch_size,), device=device)

    def step():
        with autocast(device, precision):
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def images_per_second(model_name: str, mode: str, *, batch_size: int, steps: int, runs: int,
                      warmup: int, device: torch.device, image_size: int) -> Spread:
    precision, channels_last = MODES[mode]
    step = training_step(model_name, precision, channels_last, batch_size=batch_size,
                         device=device, image_size=image_size)
    return time_it(step, warmup=warmup, runs=runs, calls=steps,
                   sync=synchronizer(device)).per_second(batch_size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet20,resnet56")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed run")
    parser.add_argument("--runs", type=int, default=5, help="timed runs (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--modes", default="fp32,bf16+channels_last,fp32+channels_last,bf16",
                        help=f"columns, from {', '.join(MODES)} (speed-up: 2nd / 1st)")
    parser.add_argument("--device", default="cpu")
    add_record_options(parser)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    modes = args.modes.split(",")
    unknown = [m for m in modes if m not in MODES]
    if unknown or len(modes) < 2:
        parser.error(f"--modes takes two or more of {', '.join(MODES)}")

    header = (f"| model | batch | {' | '.join(f'{m} img/s' for m in modes)} | "
              f"speed-up {modes[1]} / {modes[0]} |\n|---|---|{'---|' * len(modes)}---|")
    rows = []
    load_average = Load.start()
    print(header, flush=True)
    for model_name in args.models.split(","):
        medians, cells = [], []
        for mode in modes:
            rates = images_per_second(model_name, mode, batch_size=args.batch_size,
                                      steps=args.steps, runs=args.runs, warmup=args.warmup,
                                      device=device, image_size=args.image_size)
            medians.append(rates.median)
            cells.append(rates.cell(".0f"))
        row = (f"| {model_name} | {args.batch_size} | {' | '.join(cells)} | "
               f"{medians[1] / medians[0]:.2f}x |")
        rows.append(row)
        print(row, flush=True)

    record(results_path(args), "bench_train: training images/s, bf16+channels_last vs fp32",
           load=load_average.stop(), device=device, table=[header, *rows], facts=[
               f"- method: {args.warmup} warm-up steps, then {args.runs} runs of {args.steps} "
               f"steps on random {args.image_size}x{args.image_size} RGB batches; median run "
               f"(min-max)"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
