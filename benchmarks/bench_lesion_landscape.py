"""Seconds per landscape grid point and per lesioned unit, fp32 and bf16.

A grid point is one `resnets.study.loss_landscape.scan` step: set the weights to theta + a d,
then evaluate the loss and error over --images images. A lesioned unit is one evaluation over
the same images with that unit removed (`units_removed`), as `resnets lesion` does for each
unit in turn. Both are what the two commands spend nearly all their time on, so
(grid points x seconds per point) and (evaluations x seconds per unit) predict their run time.

    python3 benchmarks/bench_lesion_landscape.py                    # resnet56, 1,000 digits, CPU
    python3 benchmarks/bench_lesion_landscape.py --images 64 --points 2 --units 2 --repeats 1 --no-record
    python3 benchmarks/bench_lesion_landscape.py --device cuda --precisions fp32 bf16

The model is randomly initialised (speed does not depend on the weights); the images are the
bundled test digits (1 x 28 x 28), the data of docs/lesion.md and docs/landscape.md, or random
images of --input-size. Prints a table and appends it, with hardware, torch version, command,
date and load average, to benchmarks/RESULTS.md (unless --no-record). Figures are medians of
--repeats.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from harness import Load, add_record_options, record, results_path, synchronizer, time_it  # noqa: E402

from resnets.models import create_model  # noqa: E402
from resnets.study.lesioning import units_removed  # noqa: E402
from resnets.study.loss_landscape import random_directions, scan  # noqa: E402
from resnets.study.trained import evaluate  # noqa: E402


def _batches(args, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if args.input_size is None:
        from resnets.data import Loader, Normalizer, load

        data = load("bundled", "test")
        data = data.subset(torch.arange(min(args.images, len(data))), "test")
        normalizer = Normalizer.fit("channel", data.images)
        loader = Loader(data, args.batch_size, shuffle=False, normalizer=normalizer, device=device,
                        drop_last=False)
        return list(loader.batches(0))
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.images, *args.input_size, generator=generator)
    labels = torch.randint(0, 10, (args.images,), generator=generator)
    return [(images[i:i + args.batch_size].to(device), labels[i:i + args.batch_size].to(device))
            for i in range(0, args.images, args.batch_size)]


def _measure(args, model, batches, points, units, device) -> list[tuple[str, float, float, float]]:
    """(precision, s per grid point, s per lesioned unit, s per intact evaluation) for each
    precision: the median of --repeats timed repeats, after a warm-up evaluation."""
    directions = random_directions(model, 1, seed=0)
    sync, rows = synchronizer(device), []
    for precision in args.precisions:
        evaluate(model, batches[:1], precision)  # warm-up: allocator, kernels, autocast caches

        def one_scan():
            scan(model, batches, directions, points, precision=precision)

        def lesion_each():
            for unit in units:
                with units_removed(model, [unit]):
                    evaluate(model, batches, precision)

        def intact():
            evaluate(model, batches, precision)

        seconds = [time_it(work, runs=args.repeats, sync=sync).median / count
                   for work, count in ((one_scan, len(points)), (lesion_each, len(units)),
                                       (intact, 1))]
        rows.append((precision, *seconds))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet56")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"),
                        help="random images of this size instead of the bundled digits")
    parser.add_argument("--batch-size", type=int, default=500, help="the commands' default")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--points", type=int, default=5, help="grid points timed per repeat")
    parser.add_argument("--units", type=int, default=5, help="lesioned units timed per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    add_record_options(parser)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    batches = _batches(args, device)
    channels = batches[0][0].shape[1]
    torch.manual_seed(0)
    model = create_model(args.model, in_channels=channels).to(device).eval()
    # Points off the origin, as most of a grid is; the spacing does not change the cost.
    points = [(str(i), (0.1 * (i + 1),)) for i in range(args.points)]
    units = [i * len(model.units) // args.units for i in range(args.units)]  # spread over the stages
    load_average = Load.start()
    rows = _measure(args, model, batches, points, units, device)

    images = sum(len(labels) for _, labels in batches)
    shape = "x".join(map(str, batches[0][0].shape[1:]))
    table = ["| precision | s per grid point | s per lesioned unit | s per intact evaluation |",
             "|---|---:|---:|---:|", *[f"| {p} | {g:.3f} | {u:.3f} | {e:.3f} |" for p, g, u, e in rows]]
    per_point = {precision: seconds for precision, seconds, _, _ in rows}
    notes = ([f"- bf16 / fp32 time per grid point: {per_point['bf16'] / per_point['fp32']:.2f}x "
              f"(below 1: bf16 faster)"] if {"fp32", "bf16"} <= set(per_point) else [])
    print("\n".join([*table, *([""] + notes if notes else [])]))
    record(results_path(args), f"bench_lesion_landscape: {args.model}, {images} images",
           load=load_average.stop(), device=device, table=table, notes=notes, facts=[
               f"- method: images {shape}, batch {args.batch_size}; median of {args.repeats} "
               f"repeats of {len(points)} grid points / {len(units)} lesioned units (units {units})"])
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
