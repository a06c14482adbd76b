"""Augmented batches per second: resnets' tensor-resident Loader vs a torch DataLoader.

Both sides produce the same kind of batch from the same uint8 images: per-pixel mean
subtraction, 4-pixel zero pad + random crop, random horizontal flip, batch 128, float32.
The DataLoader side does it per image, with torch ops in `__getitem__` (as torchvision
transforms would), with 0 and with --workers worker processes. Then the Loader's share of a
resnet20 training step (forward, backward, SGD step) at the same batch size.

    python3 benchmarks/bench_loader.py                      # CIFAR-shaped random images, CPU
    python3 benchmarks/bench_loader.py --data bundled       # the bundled digits
    python3 benchmarks/bench_loader.py --device cuda --data cifar10 --data-dir ~/data

Prints a table and appends it, with hardware, torch version, command, date and load average,
to benchmarks/RESULTS.md (unless --no-record). Figures are medians of --repeats timed runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from harness import Load, add_record_options, record, results_path, synchronizer, time_it  # noqa: E402

from resnets.data import Dataset, Loader, Normalizer, load  # noqa: E402


class PerImage(torch.utils.data.Dataset):
    """The usual pipeline: one image at a time, transforms as torch ops (no torchvision here)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: torch.Tensor, pad: int, flip: bool):
        self.images, self.labels, self.mean, self.pad, self.flip = images, labels, mean, pad, flip

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        image = (self.images[index].float() - self.mean) / 255  # (C, H, W)
        _, height, width = image.shape
        if self.pad:
            image = F.pad(image, (self.pad,) * 4)
            top, left = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
            image = image[:, top : top + height, left : left + width]
        if self.flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image, self.labels[index]


def time_batches(make_iter, batches: int, device: torch.device, repeats: int) -> float:
    """Median batches/s over `repeats` runs of `batches` batches, each run from a new iterator
    after one warm-up batch."""
    current = []

    def fresh():
        current.clear()  # the last run's iterator (and its workers) goes first
        current.append(make_iter())
        next(current[0])

    def one_batch():
        images, labels = next(current[0])
        images.to(device, non_blocking=True)

    return time_it(one_batch, runs=repeats, calls=batches, setup=fresh,
                   sync=synchronizer(device)).per_second(1).median


def training_step_s(in_channels: int, num_classes: int, size: int, batch: int, device, steps: int, repeats: int):
    """Median seconds of one resnet20 training step, or None when create_model is missing."""
    try:
        from resnets import create_model
    except ImportError:
        return None
    model = create_model("resnet20", in_channels=in_channels, num_classes=num_classes).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    images = torch.randn(batch, in_channels, size, size, device=device)
    labels = torch.randint(0, num_classes, (batch,), device=device)

    def step():
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return time_it(step, warmup=1, runs=repeats, calls=steps, sync=synchronizer(device)).median


def _data(args) -> Dataset:
    if args.data == "synthetic":
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=generator)
        return Dataset(images, torch.randint(0, 10, (args.images,), generator=generator), [str(i) for i in range(10)], "synthetic")
    return load(args.data, "train", root=args.data_dir)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Loader vs DataLoader: augmented batches per second")
    parser.add_argument("--data", default="synthetic", help="synthetic (CIFAR-shaped random uint8) | bundled | cifar10 | ...")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--images", type=int, default=10_000, help="synthetic images")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=30, help="timed batches per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for the second baseline")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    add_record_options(parser)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    load_average = Load.start()
    data = _data(args)
    channels, size = data.images.shape[1], data.images.shape[-1]
    pad, flip = 4, True
    normalizer = Normalizer.fit("pixel_mean", data.images)
    loader = Loader(data, args.batch_size, shuffle=True, pad=pad, flip=flip, normalizer=normalizer, device=device)
    if len(loader) < args.batches + 1:
        raise SystemExit(f"{len(data)} images give {len(loader)} batches: need --batches + 1")

    rows = [("resnets Loader (batched, on device)", time_batches(lambda: loader.batches(0), args.batches, device, args.repeats))]
    per_image = PerImage(data.images, data.labels, normalizer.mean, pad, flip)
    for workers in sorted({0, args.workers}):
        def make(workers=workers):
            return iter(torch.utils.data.DataLoader(per_image, batch_size=args.batch_size, shuffle=True,
                                                    drop_last=True, num_workers=workers,
                                                    pin_memory=device.type == "cuda"))
        rows.append((f"torch DataLoader, per-image, {workers} workers", time_batches(make, args.batches, device, args.repeats)))

    step_s = training_step_s(channels, len(data.classes), size, args.batch_size, device, args.steps, args.repeats)
    loader_s = 1 / rows[0][1]

    table = ["| pipeline | batches/s | images/s | vs Loader |", "|---|---:|---:|---:|",
             *[f"| {name} | {rate:,.1f} | {rate * args.batch_size:,.0f} | {rate / rows[0][1]:.2f}x |"
               for name, rate in rows]]
    if step_s is None:
        step = "- resnet20 training step: not measured (resnets.create_model not available on this branch)"
    else:
        step = (f"- resnet20 training step at batch {args.batch_size}: {step_s * 1e3:,.1f} ms "
                f"(median of {args.repeats} x {args.steps} steps); Loader batch: {loader_s * 1e3:,.2f} ms; "
                f"Loader share of a step: {100 * loader_s / (loader_s + step_s):.1f}%")
    print("\n".join([*table, "", step]))
    record(results_path(args), "bench_loader: Loader vs DataLoader, augmented batches per second",
           load=load_average.stop(), device=device, table=table, notes=[step], facts=[
               "- other processes on the machine slow the Loader's multi-threaded ops most; "
               "compare --threads 1",
               f"- data: {args.data}, {len(data)} images {tuple(data.images.shape[1:])}, batch "
               f"{args.batch_size}, pad {pad} + crop, flip, pixel-mean; median of {args.repeats} "
               f"runs x {args.batches} batches"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
