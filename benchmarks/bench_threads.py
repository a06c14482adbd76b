"""Two trainings at once on one machine: torch's default threads each against a share each.

Each configuration starts `--processes` worker processes at once (default 2), each training
`--model` (default resnet20) with `--threads N` torch threads on random CIFAR-shaped batches
with the training loop's own `train_step`. The workers do `--warmup` untimed steps, wait until
all are ready, then time `--steps` steps together, so the timed parts overlap. Rounds alternate
the order of the configurations (A B, B A, ...), so a slow drift in outside load falls on both;
the table gives the median over rounds of each process's images/s and of their sum.

Other load on the machine would be measured too, so the script checks that it had the machine
to itself, two ways, and appends to benchmarks/RESULTS.md only when both pass:

- the load average (1 min) before the first round is at most IDLE_LOAD (benchmarks/harness.py);
- in each configuration whose threads fit the cores (processes x threads <= cores), every
  worker got at least MIN_CPU_SHARE of its threads' wall time as CPU time: a worker that waited
  for a core while its own siblings could not have filled them all waited for someone else.

    python3 benchmarks/bench_threads.py          # on an idle machine: 2 at once, 2 vs 1 threads
    python3 benchmarks/bench_threads.py --steps 1 --warmup 0 --rounds 1 --no-record  # smoke test
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from harness import Load, add_record_options, machine_was_idle, record, results_path  # noqa: E402

MIN_CPU_SHARE = 0.9   # CPU seconds / (wall seconds x threads) each worker must get, when
                      # the configuration's threads fit the cores


def worker(args) -> int:
    """One training process: warm up, say ready, wait for the go line, time the steps."""
    import torch

    from resnets import create_model
    from resnets.train.steps import train_step

    torch.set_num_threads(args.threads[0])  # a worker is given one count
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=10, in_channels=3).train()
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    images = torch.randn(args.batch_size, 3, 32, 32).contiguous(
        memory_format=torch.channels_last)  # (B, C, H, W)
    labels = torch.randint(0, 10, (args.batch_size,))
    for _ in range(args.warmup):
        train_step(model, optimizer, images, labels)
    print("ready", flush=True)
    sys.stdin.readline()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        train_step(model, optimizer, images, labels)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps({"img_s": args.batch_size * args.steps / wall, "wall_s": wall,
                      "cpu_s": cpu}), flush=True)
    return 0


def run_together(args, threads: int) -> list[dict]:
    """Start the workers, let them warm up, start their timed steps at once; their results."""
    command = [sys.executable, __file__, "--worker", "--threads", str(threads), "--model",
               args.model, "--batch-size", str(args.batch_size), "--steps", str(args.steps),
               "--warmup", str(args.warmup)]
    workers = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True) for _ in range(args.processes)]
    try:
        for process in workers:
            if process.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a worker failed before its timed steps: {command}")
        for process in workers:
            process.stdin.write("go\n")
            process.stdin.flush()
        results = [json.loads(process.stdout.readline()) for process in workers]
    finally:
        for process in workers:
            process.stdin.close()
            process.wait()
    return results


def _parser(cores: int) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per worker")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (median reported)")
    parser.add_argument("--processes", type=int, default=2, help="trainings at once")
    parser.add_argument("--threads", type=int, nargs="+", metavar="N",
                        help=f"threads per process to compare (default: {cores} (every "
                        f"core, torch's default) and the share, cores // processes)")
    add_record_options(parser)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    from resnets.train.device import available_cores

    cores = available_cores()
    args = _parser(cores).parse_args(argv)
    if args.worker:
        return worker(args)
    configurations = args.threads or [cores, max(1, cores // args.processes)]

    load_average = Load.start()
    measured: dict[int, list[list[dict]]] = {threads: [] for threads in configurations}
    for round_number in range(args.rounds):
        order = configurations if round_number % 2 == 0 else configurations[::-1]
        for threads in order:
            measured[threads].append(run_together(args, threads))
    load_average.stop()

    table = ["| threads per process | processes | img/s per process | img/s together | "
             "lowest CPU share per process |", "|---:|---:|---|---:|---|"]
    waited = []
    for threads in configurations:
        rounds = measured[threads]
        each = [statistics.median(r[i]["img_s"] for r in rounds) for i in range(args.processes)]
        shares = [min(r[i]["cpu_s"] / (r[i]["wall_s"] * threads) for r in rounds)
                  for i in range(args.processes)]
        if args.processes * threads <= cores and min(shares) < MIN_CPU_SHARE:
            waited.append(f"{threads} thread(s): a worker got {min(shares):.0%} of its "
                          f"threads' time")
        together = statistics.median(sum(result["img_s"] for result in r) for r in rounds)
        table.append(f"| {threads} | {args.processes} | {', '.join(f'{v:.0f}' for v in each)} "
                     f"| {together:.0f} | {', '.join(f'{s:.0%}' for s in shares)} |")
    print("\n".join([*table, load_average.summary()]))
    if machine_was_idle(load_average, waited):
        record(results_path(args), f"bench_threads: {args.processes} trainings at once, threads "
               f"per process", load=load_average, device="cpu", table=table, facts=[
                   f"- method: {args.model}, batch {args.batch_size}, fp32 channels_last; "
                   f"{args.warmup} warm-up steps, then {args.steps} timed steps in every "
                   f"process at once; median of {args.rounds} rounds (order alternating)"])
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
