"""Inference images/s: resnets' default inference path against the same model in onnxruntime.

For each model and batch size, the same network (random weights, BatchNorm statistics of a
calibration batch: speed does not depend on the values) on the same normalised float batches:

- resnets default: what `resnets predict` and `Trained.inference_model()` run: precision auto
  and engine auto, both chosen by what measured faster on this machine (resnets.train.engine:
  a probe cached under ~/.cache/resnets, run on first use); the engine is PyTorch (BatchNorm
  folded into the convolutions, convolution+addition+ReLU fused into single oneDNN calls,
  channels_last, under torch.inference_mode) or onnxruntime (the model exported once, cached,
  checked against PyTorch), per batch size; the "engine" column says which ran; the input
  handed over as a user has it (contiguous fp32);
- model as is: the unchanged eval-mode model (BatchNorm and all, contiguous fp32) under
  torch.no_grad, what a user runs without the fast path;
- resnets fp32 or bf16: the PyTorch engine forced to the precision auto did not pick
  (`--precision fp32|bf16 --engine torch`), so the table shows what the auto rule gains;
- onnxruntime: the model exported as `resnets export --onnx` exports it (torch.onnx.export,
  dynamo, dynamic batch), run by onnxruntime's CPU provider with its default graph
  optimisations (which fold BatchNorm and fuse convolution with ReLU and additions), as many
  intra-op threads as torch uses.

--malloc keep (the default) has glibc keep freed memory for reuse in the whole process, as
every `resnets` command that runs networks does; --malloc default leaves glibc's behaviour (a
user's own script). onnxruntime allocates from its own arena either way.

Models: resnet20 on 3x32x32 (10 classes) and resnet50 on 3x224x224 (1,000 classes) at batch 1,
8 and 64. Each cell: --warmup untimed calls, then --runs timed runs of about --seconds each
(at least one call); the median run (min-max). The goal this answers: resnets' default at or
above onnxruntime at every batch size. Run it on an idle machine: the engine probe's choice,
made the first time, is cached (delete ~/.cache/resnets/probes to measure it again). Prints
the table and appends it, with the hardware, versions, command, date and load average before
and after, to benchmarks/RESULTS.md (--no-record for none).

    python3 benchmarks/bench_inference.py               # resnet20 and resnet50, batch 1, 8, 64
    python3 benchmarks/bench_inference.py --quick       # tiny sizes: proves it runs
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from harness import (Load, Spread, add_malloc_option, add_record_options, apply_malloc,  # noqa: E402
                     record, results_path, time_it)

from resnets import create_model  # noqa: E402
from resnets.models.onnx import export_model, onnx_session, onnxruntime_version  # noqa: E402
from resnets.train.engine import (InferenceModel, inference_precision_why,  # noqa: E402
                                  onnxruntime_table, torch_table)

# (model, input size, classes)
MODELS = {"resnet20": (32, 10), "resnet50": (224, 1000)}


def _model(name: str, size: int, classes: int) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(name, num_classes=classes)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # running statistics of one calibration batch
    with torch.no_grad():
        model.train()(torch.randn(8, 3, size, size))
    return model.eval()


def _rates(calls: dict, batch: torch.Tensor, *, seconds: float, warmup: int, runs: int
           ) -> dict[str, list[float]]:
    """Images/s of each of `calls` (label -> call) in `runs` timed runs, each of as many calls
    as the last warm-up call says fill `seconds` (at least one). The runs take turns (run 1 of
    every call, then run 2, ...), so a drift in the machine's speed falls on all of them: on a
    2-core EPYC VM two sessions of the same ONNX graph measured one after the other differed by
    a fifth."""
    rates: dict[str, list[float]] = {label: [] for label in calls}
    for run in range(runs):
        for label, call in calls.items():
            spread = time_it(lambda: call(batch), warmup=warmup if run == 0 else 1, runs=1,
                             seconds=seconds)
            rates[label].extend(spread.per_second(len(batch)).values)
    return rates


def _session(model: nn.Module, size: int):
    """onnxruntime on the model as `resnets export --onnx` exports it (resnets.models.onnx),
    with as many threads as torch."""
    session = onnx_session(export_model(model, torch.randn(2, 3, size, size)).SerializeToString())
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch.numpy()})[0], onnxruntime_version()


def _cell(rates: list[float]) -> str:
    return Spread(rates).cell()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet20,resnet50")
    parser.add_argument("--batch-sizes", default="1,8,64")
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="length of a timed run (at least one call)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first")
    parser.add_argument("--quick", action="store_true",
                        help="resnet20 at 32 and resnet50 at 64x64, batch 1 and 4, 1 run, not "
                        "recorded: proves the script runs, measures nothing")
    parser.add_argument("--no-other-precision", action="store_true",
                        help="skip the precision auto did not pick (bf16 on a CPU without "
                        "native bf16 takes minutes a call for resnet50 at batch 64)")
    add_malloc_option(parser)
    add_record_options(parser, quick=True)
    args = parser.parse_args(argv)
    sizes = dict(MODELS)
    if args.quick:
        sizes["resnet50"] = (64, 1000)
        args.batch_sizes, args.seconds, args.runs, args.warmup = "1,4", 0.01, 1, 1
    results = results_path(args, record_by_default=not args.quick)
    cpu = torch.device("cpu")
    auto, why = inference_precision_why("auto", cpu)
    probes = f"torch s/img {torch_table()}, onnxruntime s/img {onnxruntime_table()}"
    malloc_line = apply_malloc(args.malloc)
    load_average = Load.start()

    other = "bf16" if auto == "fp32" else "fp32"
    header = (f"| model | input | batch | model as is (fp32, no_grad) img/s | resnets default "
              f"({auto}, engine auto) img/s | engine | resnets {other} img/s | onnxruntime "
              f"img/s | default / onnxruntime | max logit diff vs onnxruntime |\n"
              f"|---|---|---:|---:|---:|---|---:|---:|---:|---:|")
    print(header, flush=True)
    rows, goals, ort_version = [], [], "?"
    for name in args.models.split(","):
        size, classes = sizes[name]
        model = _model(name, size, classes)
        default = InferenceModel(model, cpu, auto, engine="auto")
        second = InferenceModel(model, cpu, other)

        def as_is(batch, model=model):  # what a user runs without the fast path
            with torch.no_grad():
                return model(batch)
        run_ort, ort_version = _session(model, size)
        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            batch = torch.randn(batch_size, 3, size, size)
            diff = float((default(batch) - torch.from_numpy(run_ort(batch))).abs().max())
            timed = _rates({label: call for label, call in (
                ("as_is", as_is), ("default", default), ("other", second), ("ort", run_ort))
                if not (label == "other" and args.no_other_precision)},
                batch, seconds=args.seconds, warmup=args.warmup, runs=args.runs)
            ratio = statistics.median(timed["default"]) / statistics.median(timed["ort"])
            engine = default.engine_for(batch_size)
            ran = default.ran.get(engine, default.describe())
            row = (f"| {name} | 3x{size}x{size} | {batch_size} | {_cell(timed['as_is'])} | "
                   f"{_cell(timed['default'])} | {ran} | "
                   f"{_cell(timed['other']) if 'other' in timed else '-'} | "
                   f"{_cell(timed['ort'])} | {ratio:.2f}x | "
                   f"{diff:.2g} |")
            rows.append(row)
            print(row, flush=True)
            goals.append(f"{name} batch {batch_size} {ratio:.2f}x")
    load_average.stop()
    verdict = (f"- goal: resnets' default at or above onnxruntime at every batch size: "
               f"{', '.join(goals)} (precision auto chose {auto}: {why}; the probes: {probes})")
    print("\n" + verdict)
    record(results, "bench_inference: inference images/s, resnets default path vs onnxruntime",
           load=load_average, device="cpu", others={"onnxruntime": ort_version},
           table=[header, *rows], notes=[verdict], facts=[
               malloc_line,
               f"- method: random weights with calibrated BatchNorm statistics; random normalised "
               f"inputs; {args.warmup} warm-up calls, then {args.runs} runs of about "
               f"{args.seconds:g} s (at least one call), the paths taking turns run by run; "
               f"median run (min-max); the bf16 path's "
               f"logits differ from fp32 ones by bf16 rounding"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
