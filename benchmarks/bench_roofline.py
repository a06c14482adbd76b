"""The training step against this machine's own limit: its dense matmul rate in fp32 and bf16,
and the FLOP/s a resnets training step achieves, as a share of the rate at its precision.

A training step costs about 3 forward passes of multiply-adds (forward, and the backward's
input and weight gradients), 2 FLOPs each, per image: achieved FLOP/s = img/s x 3 x 2 x the
forward multiply-adds (`resnets.models.summary.count_macs`, at 3x32x32). The limit is a
square fp32 / bf16 matmul (`--matmul-size`, 2048 by default) on the same threads. Where a
model trains below `--goal` of the limit at the precision it trains in (precision `auto`),
torch.profiler says which operators take the rest of the step.

    python3 benchmarks/bench_roofline.py                                  # resnet20, resnet56
    python3 benchmarks/bench_roofline.py --models resnet20 --runs 1 --no-record   # a trial
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import training_step  # noqa: E402
from harness import Load, add_record_options, record, results_path, time_it  # noqa: E402

from resnets import create_model  # noqa: E402
from resnets.models.summary import count_macs  # noqa: E402
from resnets.train.probe import training_precision  # noqa: E402

PRECISIONS = ("fp32", "bf16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def matmul_flops(precision: str, size: int, runs: int) -> float:
    """FLOP/s of a `size` x `size` matmul in `precision` (median of `runs` runs of 1 s)."""
    a = torch.randn(size, size).to(DTYPES[precision])
    b = torch.randn(size, size).to(DTYPES[precision])
    seconds = time_it(lambda: torch.mm(a, b), warmup=2, runs=runs, seconds=1.0).median
    return 2 * size**3 / seconds


def without_kernels(size: int = 256, factor: float = 3.0) -> dict[str, float]:
    """{precision: how many times slower than fp32} for each precision whose `size` x `size`
    matmul runs more than `factor` times slower than fp32's here: no fast kernels (bf16 on an
    AVX2 CPU: 0.3 GFLOP/s against 154, so its 2048 matmul alone took minutes). Their rows are
    left out: neither a limit nor a step of theirs says anything about this machine."""
    rates = {p: matmul_flops(p, size, runs=3) for p in PRECISIONS}
    return {p: rates["fp32"] / rate for p, rate in rates.items()
            if p != "fp32" and rates["fp32"] / rate > factor}


def step_flops(model_name: str, precision: str, batch_size: int, runs: int) -> tuple[float, float]:
    """(img/s, achieved FLOP/s) of the training step."""
    macs = count_macs(create_model(model_name, num_classes=10, in_channels=3), (3, 32, 32))
    step = training_step(model_name, precision, True, batch_size=batch_size,
                         device=torch.device("cpu"))
    images_per_second = time_it(step, warmup=3, runs=runs, calls=5).per_second(batch_size).median
    return images_per_second, images_per_second * 3 * 2 * macs


def top_operators(model_name: str, precision: str, batch_size: int, count: int = 8) -> list[str]:
    """The operators that take most of a step's time (self CPU time, 3 profiled steps)."""
    from torch.profiler import ProfilerActivity, profile

    step = training_step(model_name, precision, True, batch_size=batch_size,
                         device=torch.device("cpu"))
    step()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(3):
            step()
    events = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return [f"{e.key} {100 * e.self_cpu_time_total / total:.1f}%" for e in events[:count]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet20,resnet56")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--runs", type=int, default=3, help="timed runs (median reported)")
    parser.add_argument("--goal", type=float, default=0.5,
                        help="share of the matmul rate a step should reach (default 0.5)")
    add_record_options(parser)
    args = parser.parse_args(argv)
    load = Load.start()
    trains_in = training_precision("auto", torch.device("cpu"))[0]
    slow = without_kernels()
    slow.pop(trains_in, None)  # the precision runs train in is always measured
    limits = {p: matmul_flops(p, args.matmul_size, args.runs) for p in PRECISIONS
              if p not in slow}
    header = ("| model | precision | img/s | achieved GFLOP/s | matmul GFLOP/s | share |\n"
              "|---|---|---:|---:|---:|---:|")
    rows, notes = [], []
    print(header, flush=True)
    for model_name in args.models.split(","):
        for precision in PRECISIONS:
            if precision in slow:
                rows.append(f"| {model_name} | {precision} | - | - | - | no fast {precision} "
                            f"kernels: its matmul ran {slow[precision]:.0f}x slower than fp32 |")
                print(rows[-1], flush=True)
                continue
            rate, flops = step_flops(model_name, precision, args.batch_size, args.runs)
            share = flops / limits[precision]
            mark = " (auto)" if precision == trains_in else ""
            rows.append(f"| {model_name} | {precision}{mark} | {rate:.0f} | {flops / 1e9:.1f} | "
                        f"{limits[precision] / 1e9:.1f} | {100 * share:.0f}% |")
            print(rows[-1], flush=True)
            if precision == trains_in and share < args.goal:
                ops = top_operators(model_name, precision, args.batch_size)
                notes.append(f"- {model_name} ({precision}) is below {100 * args.goal:.0f}% of "
                             f"the matmul rate; the step's time by operator: {'; '.join(ops)}")
                print(notes[-1], flush=True)
    record(results_path(args), "bench_roofline: the training step against the machine's "
           "matmul rate", load=load.stop(), table=[header, *rows], notes=notes, facts=[
               f"- method: {args.matmul_size}x{args.matmul_size} matmul, median of {args.runs} "
               f"runs of 1 s; training step at batch {args.batch_size}, 3x32x32, channels_last, "
               f"median of {args.runs} runs of 5 steps; achieved = img/s x 3 x 2 x forward "
               f"multiply-adds; precision auto picks {trains_in} here"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
