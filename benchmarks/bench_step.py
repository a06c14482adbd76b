"""Training images/s: resnets' step, eager and compiled, against a conventional pipeline.

Every row trains the same model on the same images (CIFAR-shaped: 3x32x32, 10 classes; pad 4
+ random crop, random flip, per-channel normalisation), SGD with momentum 0.9 and weight decay
5e-4, batch 128, and the figure includes getting each batch:

- conventional, 0 / 2 workers: what a user writes instead: per-image PIL transforms (pad and
  crop, flip, to-tensor, normalise, as torchvision's RandomCrop(32, padding=4),
  RandomHorizontalFlip, ToTensor, Normalize do) in a torch DataLoader, fp32, contiguous
  tensors, `loss = cross_entropy(model(x), y)`;
- resnets eager fp32: resnets' Loader (the split resident, batches augmented at once) and
  train_step in fp32, contiguous;
- resnets eager bf16+channels_last: the same in bf16 autocast and channels_last;
- resnets step, eager: what `resnets train --no-compile` runs here: channels_last, precision
  auto (bf16 on a CPU with AMX, else fp32);
- resnets step, compiled (units | model): the same compiled as `--compile` compiles it
  (resnets.train.compile: each residual unit, or the whole forward).

Then compile seconds, each in a fresh process: "cold" with an empty TorchInductor cache,
"warm" with the cache the cold one filled (a second run, a study's later runs), and the
compiled and eager step times measured there. The goal this answers: resnets at least 2.5x
the conventional pipeline's images/s on a CPU with AMX, at least 1.5x on one without.

Each row: --warmup untimed steps, then --runs timed runs of --steps steps; the median run
(min-max). Prints the tables and appends them, with the hardware, torch version, command, date
and the load average before and after, to benchmarks/RESULTS.md (--results '' for none).

    python3 benchmarks/bench_step.py                    # resnet20/56/110, batch 128 (~20 min, 2 cores)
    python3 benchmarks/bench_step.py --scopes units,model   # also the whole-model compile
    python3 benchmarks/bench_step.py --quick            # a tiny setting that proves it runs
    python3 benchmarks/bench_step.py --data cifar10 --data-dir ~/data   # real CIFAR-10 images
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from harness import (Load, Spread, add_malloc_option, add_record_options, apply_malloc,  # noqa: E402
                     record, results_path, time_it)

from resnets import create_model  # noqa: E402
from resnets.data import Dataset, Loader, Normalizer, load  # noqa: E402
from resnets.train.compile import attach, compile_targets  # noqa: E402
from resnets.train.device import cpu_has_amx  # noqa: E402
from resnets.train.probe import training_precision  # noqa: E402
from resnets.train.steps import train_step  # noqa: E402

PAD = 4
LR, MOMENTUM, WD = 0.1, 0.9, 5e-4


class ConventionalImages(torch.utils.data.Dataset):
    """Per-image PIL transforms, as a torchvision pipeline does them (no torchvision needed):
    RandomCrop(size, padding=4), RandomHorizontalFlip, ToTensor, Normalize(mean, std)."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, mean, std, pad: int = PAD):
        self.images, self.labels, self.pad = images_hwc, labels, pad
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        from PIL import Image, ImageOps

        image = Image.fromarray(self.images[index])
        width, height = image.size
        padded = ImageOps.expand(image, border=self.pad, fill=0)
        top, left = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
        image = padded.crop((left, top, left + width, top + height))
        if torch.rand(()) < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous().float().div(255)
        return tensor.sub_(self.mean).div_(self.std), int(self.labels[index])


def _data(args) -> Dataset:
    if args.data == "synthetic":
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8,
                               generator=generator)
        labels = torch.randint(0, 10, (args.images,), generator=generator)
        return Dataset(images, labels, [str(i) for i in range(10)], "synthetic")
    return load(args.data, "train", root=args.data_dir)


def _forever(make_iterator):
    """Batches without end: a new epoch (iterator) whenever one runs out."""
    epoch = 0
    while True:
        for batch in make_iterator(epoch):
            yield batch
        epoch += 1


def _model(name: str, classes: int, channels_last: bool):
    torch.manual_seed(0)
    model = create_model(name, num_classes=classes, in_channels=3).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    return model, optimizer


def _rates(step, batches, *, batch_size: int, warmup: int, steps: int, runs: int) -> Spread:
    """Images/s of `runs` runs of `steps` steps, each step on the next of `batches`."""
    return time_it(lambda: step(*next(batches)), warmup=warmup, runs=runs,
                   calls=steps).per_second(batch_size)


def conventional(name: str, data: Dataset, workers: int, args) -> Spread:
    images = data.images.permute(0, 2, 3, 1).contiguous().numpy()  # (N, H, W, C) for PIL
    pixels = data.images.float().div(255)
    mean = pixels.mean(dim=(0, 2, 3)).tolist()
    std = pixels.std(dim=(0, 2, 3)).tolist()
    dataset = ConventionalImages(images, data.labels.numpy(), mean, std)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True,
                                         drop_last=True, num_workers=workers,
                                         persistent_workers=workers > 0)
    model, optimizer = _model(name, len(data.classes), channels_last=False)

    def step(x, y):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return _rates(step, _forever(lambda epoch: loader), batch_size=args.batch_size,
                  warmup=args.warmup, steps=args.steps, runs=args.runs)


def ours(name: str, data: Dataset, precision: str, channels_last: bool, scope: str | None,
         args) -> Spread:
    normalizer = Normalizer.fit("channel", data.images)
    loader = Loader(data, args.batch_size, shuffle=True, pad=PAD, flip=True,
                    normalizer=normalizer, channels_last=channels_last, workers=0)
    model, optimizer = _model(name, len(data.classes), channels_last)
    if scope is not None:
        attach(compile_targets(model, scope))  # compiles in the first warm-up step

    def step(x, y):
        train_step(model, optimizer, x, y, precision=precision)

    return _rates(step, _forever(loader.batches), batch_size=args.batch_size,
                  warmup=max(args.warmup, 2 if scope else 0), steps=args.steps, runs=args.runs)


# ------------------------------------------------------------- compile seconds, per process
def probe(args) -> int:
    """In this (fresh) process: the eager step time, the first compiled step, and the compiled
    step time; prints them as JSON. TORCHINDUCTOR_CACHE_DIR says which cache."""
    model, optimizer = _model(args.probe, 10, channels_last=True)
    x = torch.randn(args.batch_size, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch_size,))

    def step():
        train_step(model, optimizer, x, y, precision=args.precision)

    eager = time_it(step, warmup=1, runs=3).median
    attach(compile_targets(model, args.scope))
    first = time_it(step).median  # compiles
    compiled = time_it(step, warmup=1, runs=3).median
    print(json.dumps({"eager_s": eager, "compiled_s": compiled,
                      "compile_s": max(0.0, first - compiled)}))
    return 0


def compile_seconds(name: str, scope: str, precision: str, cache: Path, args) -> dict:
    command = [sys.executable, __file__, "--probe", name, "--scope", scope,
               "--precision", precision, "--batch-size", str(args.batch_size)]
    result = subprocess.run(command, capture_output=True, text=True,
                            env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache)})
    if result.returncode != 0:
        raise SystemExit(f"compile probe failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet20,resnet56,resnet110")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8, help="steps per timed run")
    parser.add_argument("--runs", type=int, default=3, help="timed runs (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--data", default="synthetic",
                        help="synthetic (random CIFAR-shaped uint8 images) | cifar10 | ...")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--images", type=int, default=10_000, help="synthetic images")
    parser.add_argument("--workers", type=int, default=2,
                        help="DataLoader workers of the second conventional row")
    parser.add_argument("--scopes", default="units",
                        help="compiled rows: units, model, or units,model")
    parser.add_argument("--no-compile-time", action="store_true",
                        help="skip the cold and warm compile measurements (fresh processes)")
    parser.add_argument("--quick", action="store_true",
                        help="resnet8, batch 16, 512 images, 1 run of 2 steps, not recorded: "
                        "proves the script runs, measures nothing")
    add_malloc_option(parser)
    add_record_options(parser, quick=True)
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # internal: one compile probe
    parser.add_argument("--scope", default="units", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    return parser


def step_table(args, data: Dataset, auto: str, scopes: list[str]) -> tuple[list[str], list[str]]:
    """The images/s table (printed as it grows), and each model's best resnets / conventional."""
    rows = ["conventional (PIL per image, DataLoader 0 workers, fp32, contiguous)",
            f"conventional (PIL per image, DataLoader {args.workers} workers, fp32, contiguous)",
            "resnets Loader + eager fp32, contiguous",
            "resnets Loader + eager bf16 + channels_last",
            f"resnets step, eager (channels_last, precision auto = {auto})",
            *[f"resnets step, compiled ({scope}; channels_last, {auto})" for scope in scopes]]
    table = ["| model | pipeline | img/s, median (min-max) | vs conventional |",
             "|---|---|---:|---:|"]
    print("\n".join(table), flush=True)
    goals = []
    for name in args.models.split(","):
        measured = [conventional(name, data, 0, args), conventional(name, data, args.workers, args),
                    ours(name, data, "fp32", False, None, args),
                    ours(name, data, "bf16", True, None, args),
                    ours(name, data, auto, True, None, args),
                    *[ours(name, data, auto, True, scope, args) for scope in scopes]]
        medians = [r.median for r in measured]
        baseline = max(medians[:2])
        for row, rates, median in zip(rows, measured, medians):
            ratio = "" if row.startswith("conventional") else f"{median / baseline:.2f}x"
            table.append(f"| {name} | {row} | {rates.cell()} | {ratio} |")
            print(table[-1], flush=True)
        goals.append(f"{name} {max(medians[4:]) / baseline:.2f}x")
    return table, goals


def compile_table(args, auto: str, scopes: list[str]) -> list[str]:
    """Cold and warm compile seconds per model and scope, each in a fresh process (printed as
    it grows); with the record's sentence saying how, first."""
    table = ["- compile seconds: each in a fresh process (cold: empty TorchInductor cache; "
             "warm: the cache the cold run filled); step times from the warm process", "",
             "| model | scope | cold compile s | warm compile s | eager step s | "
             "compiled step s | speed-up |", "|---|---|---:|---:|---:|---:|---:|"]
    print("\n" + "\n".join(table[2:]), flush=True)
    for name in args.models.split(","):
        for scope in scopes:
            with tempfile.TemporaryDirectory(prefix="bench-inductor-") as cache:
                cold = compile_seconds(name, scope, auto, Path(cache), args)
                warm = compile_seconds(name, scope, auto, Path(cache), args)
            table.append(f"| {name} | {scope} | {cold['compile_s']:.1f} | "
                         f"{warm['compile_s']:.1f} | {warm['eager_s']:.3f} | "
                         f"{warm['compiled_s']:.3f} | "
                         f"{warm['eager_s'] / warm['compiled_s']:.2f}x |")
            print(table[-1], flush=True)
    return table


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.probe:
        return probe(args)
    if args.quick:
        args.models, args.batch_size, args.images = "resnet8", 16, 512
        args.steps, args.runs, args.warmup = 2, 1, 1
    scopes = [s for s in args.scopes.split(",") if s]
    malloc_line = apply_malloc(args.malloc)
    load_average = Load.start()
    data = _data(args)
    auto = training_precision("auto", torch.device("cpu"))[0]
    table, goals = step_table(args, data, auto, scopes)
    compiled = [] if args.no_compile_time else compile_table(args, auto, scopes)
    load_average.stop()

    amx = cpu_has_amx()
    goal = 2.5 if amx else 1.5
    verdict = (f"- goal: resnets at least {goal}x the conventional pipeline (this CPU "
               f"{'has' if amx else 'has no'} AMX); best resnets step (eager or compiled) / "
               f"best conventional: {', '.join(goals)}")
    print("\n" + verdict)
    record(results_path(args, record_by_default=not args.quick), "bench_step: training "
           "images/s, resnets step vs a conventional pipeline", load=load_average,
           device="cpu", table=[*table, *([""] + compiled if compiled else [])],
           notes=[verdict], facts=[
               malloc_line,
               f"- data: {args.data}, {len(data)} images 3x32x32, batch {args.batch_size}, pad "
               f"{PAD} + crop, flip, per-channel normalisation; SGD momentum {MOMENTUM}, wd {WD}",
               f"- method: {args.warmup} warm-up steps (at least 2 when compiled: the first "
               f"compiles), then {args.runs} runs of {args.steps} steps, batches included; "
               f"median run (min-max)"])
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
