"""One training on a 2-core CPU: 1 process x 2 threads against 2 processes x 1 thread (DDP, gloo).

Each configuration runs the real command, `resnets train` (under `torchrun --nproc-per-node 2`
for DDP), on the bundled digits with the same global batch and steps, and reads the training
images/s from the run's summary.json (training steps only: evaluation and start-up excluded).
Rounds alternate the order (A B, B A, ...); the table gives the median over rounds.

    python3 benchmarks/bench_ddp.py                      # on an idle machine
    python3 benchmarks/bench_ddp.py --steps 4 --rounds 1 --no-record   # smoke test

Prints the table and appends it, with hardware, torch version, command, date and load average,
to benchmarks/RESULTS.md (unless --no-record).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Load, add_record_options, record, results_path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run(processes: int, threads: int, args, out: Path, name: str) -> float:
    train = ["train", "--model", args.model, "--data", "bundled", "--batch-size",
             str(args.batch_size), "--iters", str(args.steps), "--eval-every", str(args.steps),
             "--log-every", str(args.steps), "--threads", str(threads), "--progress", "none",
             "--out", str(out), "--name", name]
    if processes == 1:
        command = [sys.executable, "-m", "resnets", *train]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc-per-node", str(processes), "-m", "resnets", *train]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": str(threads)}
    subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    return json.loads((out / name / "summary.json").read_text())["img_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=3)
    add_record_options(parser)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    setups = [(1, cores), (cores, 1)]  # (processes, threads each)
    load_average = Load.start()
    rates: dict[tuple[int, int], list[float]] = {s: [] for s in setups}
    with tempfile.TemporaryDirectory() as folder:
        for round_index in range(args.rounds):
            order = setups if round_index % 2 == 0 else setups[::-1]
            for processes, threads in order:
                rate = run(processes, threads, args, Path(folder),
                           f"p{processes}-t{threads}-r{round_index}")
                rates[(processes, threads)].append(rate)
                print(f"round {round_index}: {processes} process(es) x {threads} thread(s): "
                      f"{rate:,.0f} img/s", flush=True)
    load_average.stop()
    base = statistics.median(rates[setups[0]])
    rows = [f"| {p} x {t} | {'DDP, gloo' if p > 1 else 'one process'} | "
            f"{statistics.median(rates[(p, t)]):,.0f} | "
            f"{statistics.median(rates[(p, t)]) / base:.2f}x |" for p, t in setups]
    table = ["| processes x threads | how | img/s (median) | vs 1 process |",
             "|---|---|---:|---:|", *rows]
    print("\n".join(table))
    record(results_path(args), f"bench_ddp: DDP on one machine, {args.model}, global batch "
           f"{args.batch_size}, {args.steps} steps", load=load_average, device="cpu",
           table=table, facts=[
               f"- method: the real `resnets train` on the bundled digits (DDP: under torchrun, "
               f"gloo), training img/s from the run's summary.json; median of {args.rounds} "
               f"rounds, alternating order"])


if __name__ == "__main__":
    main()
