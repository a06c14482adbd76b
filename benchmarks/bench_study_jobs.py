"""A study's wall time with one run at a time against several at once (`resnets study --jobs`).

Each configuration runs a whole `resnets study` from an empty folder as a user would, with
`--jobs N` (default: 1 and 2): with 1 the runs train one after another, each with torch's
default threads (every core); with N they train N at once in worker processes, each with its
share of the cores (`resnets.study.parallel.worker_threads`). The time includes everything a
user waits for: starting the processes, loading the data, the evaluations, plots and the
report. Rounds alternate the order of the configurations (A B, B A, ...), so a slow drift in
outside load falls on both; the table gives the median and the range over rounds.

The small study by default: plain and residual 20 on the bundled digits, seeds 0 and 1 (four
runs, so two jobs fill their slots twice), 2 epochs each. `--default-study` times the study a
bare `resnets study` trains (16 runs of 8 epochs: about 25 minutes per round with --jobs 1 on a
2-core CPU), the figure issue #10's goal is about.

Other load on the machine would be measured too, so the table is appended to
benchmarks/RESULTS.md only if the load average (1 min) before the first round is at most
IDLE_LOAD (benchmarks/harness.py). Where a setting wins, make it the default in `default_jobs`
(src/resnets/study/parallel.py).

    python3 benchmarks/bench_study_jobs.py                    # on an idle machine
    python3 benchmarks/bench_study_jobs.py --default-study --rounds 1
    python3 benchmarks/bench_study_jobs.py --iters 2 --rounds 1 --no-record   # smoke test
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from harness import (Load, add_record_options, machine_was_idle, record,  # noqa: E402
                     results_path, time_command)


def study_file(args, folder: Path) -> Path:
    """The study to time, as a study TOML file."""
    from resnets.study.spec import default_study, study_from_dict

    if args.default_study:
        study = default_study()
    else:
        budget = {"iters": args.iters} if args.iters else {"epochs": args.epochs}
        study = study_from_dict({"name": "bench", "kinds": args.kinds, "depths": args.depths,
                                 "seeds": args.seeds, "preset": "quick",
                                 "train": {"data": "bundled", **budget,
                                           "model_args": {"zero_init_last": True}}})
    path = folder / "study.toml"
    path.write_text(study.to_toml())
    return path


def study_words(args) -> str:
    """The study `study_file(args)` makes, in words, for a record."""
    if args.default_study:
        return ("the default study of each version (a bare `resnets study`: plain/resnet 20, "
                "32, 44, 56, seeds 0 1, each version's own recipe)")
    budget = f"{args.iters} step(s)" if args.iters else f"{args.epochs:g} epochs"
    return (f"kinds {' '.join(args.kinds)}, depths {' '.join(map(str, args.depths))}, seeds "
            f"{' '.join(map(str, args.seeds))}, {budget} per run on the bundled digits, quick "
            f"preset")


def run_once(args, study: Path | None, jobs: int, out: Path, name: str, src: Path = ROOT / "src",
             environ: dict | None = None) -> tuple[float, str]:
    """Wall seconds of one whole `resnets study --jobs N` with the package in `src`, and the
    table it printed; `study` None runs that package's own default study (a bare `resnets
    study`)."""
    config = [] if study is None else ["--config", str(study)]  # None: the version's default
    command = [sys.executable, "-m", "resnets", "study", *config, "--name",
               name, "--out", str(out), "--progress", "none", "--jobs", str(jobs)]
    environ = {**os.environ, **(environ or {}), "PYTHONPATH": os.pathsep.join(
        filter(None, [str(src), os.environ.get("PYTHONPATH")]))}
    seconds, result = time_command(command, env=environ)
    return seconds.median, result.stdout


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2], metavar="N",
                        help="--jobs values to compare (default: 1 2)")
    parser.add_argument("--kinds", nargs="+", default=["plain", "resnet"])
    parser.add_argument("--depths", type=int, nargs="+", default=[20])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=float, default=2.0, help="per run (default: 2)")
    parser.add_argument("--iters", type=int, help="steps per run instead of --epochs")
    parser.add_argument("--default-study", action="store_true",
                        help="time the bundled default study instead (ignores the four above)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (median reported)")
    add_record_options(parser)
    return parser


def time_rounds(args) -> tuple[dict[int, list[float]], dict[int, set[str]], int]:
    """Wall seconds of each --jobs value per round (order alternating), the tables the studies
    printed, and the study's number of runs."""
    from resnets.study.spec import read_study
    from resnets.train.progress import format_duration

    seconds: dict[int, list[float]] = {jobs: [] for jobs in args.jobs}
    tables: dict[int, set[str]] = {jobs: set() for jobs in args.jobs}
    with tempfile.TemporaryDirectory(prefix="bench-study-jobs-") as folder:
        study = study_file(args, Path(folder))
        for round_number in range(args.rounds):
            order = args.jobs if round_number % 2 == 0 else args.jobs[::-1]
            for jobs in order:
                wall, table = run_once(args, study, jobs, Path(folder),
                                       f"jobs{jobs}-round{round_number}")
                seconds[jobs].append(wall)
                tables[jobs].add(table)
                print(f"round {round_number + 1}, --jobs {jobs}: {format_duration(wall)}",
                      flush=True)
        return seconds, tables, len(read_study(study).runs())


def main(argv: list[str] | None = None) -> int:
    from resnets.study.parallel import worker_threads
    from resnets.train.device import available_cores
    from resnets.train.progress import format_duration

    args = _parser().parse_args(argv)
    cores = available_cores()
    load_average = Load.start()
    seconds, tables, runs = time_rounds(args)
    load_average.stop()

    base = statistics.median(seconds[args.jobs[0]])
    table = ["| --jobs | threads per run | runs | wall time (median) | min-max s | vs --jobs "
             f"{args.jobs[0]} |", "|---:|---:|---:|---:|---|---:|"]
    for jobs in args.jobs:
        median = statistics.median(seconds[jobs])
        threads = cores if jobs == 1 else worker_threads(min(jobs, runs), cores)
        table.append(f"| {jobs} | {threads} | {runs} | {format_duration(median)} "
                     f"({median:.0f} s) | {min(seconds[jobs]):.0f}-{max(seconds[jobs]):.0f} | "
                     f"{base / median:.2f}x |")
    best = min(args.jobs, key=lambda jobs: statistics.median(seconds[jobs]))
    same = len(set().union(*tables.values())) == 1
    notes = [f"- fastest: --jobs {best}, {base / statistics.median(seconds[best]):.2f}x the "
             f"speed of --jobs {args.jobs[0]}",
             f"- the tables the studies printed were {'identical' if same else 'not all identical'}"
             f" across configurations and rounds" + ("" if same else
                                                     " (threads per run differ: float sums in "
                                                     "another order)")]
    print("\n".join([*table, *notes, load_average.summary()]))
    if machine_was_idle(load_average):
        record(results_path(args), f"bench_study_jobs: a study's wall time, --jobs "
               f"{' vs '.join(map(str, args.jobs))}", load=load_average, device="auto",
               table=table, notes=notes, facts=[
                   f"- method: {study_words(args)}; each configuration a whole `resnets study "
                   f"--jobs N` from an empty folder (process start, data, evaluations, plots, "
                   f"report); median of {args.rounds} rounds (order alternating)"])
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
