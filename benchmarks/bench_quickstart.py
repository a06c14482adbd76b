"""Time to the quickstart's accuracy: `resnets train` (no arguments) with two versions of
resnets, side by side, over several seeds (issue #24: a third of the time, the same median test
error).

Each version is a git revision unpacked to a temporary folder (`git archive`), or "." for the
working tree. For every seed, both versions run `resnets train --seed S` in a fresh process,
order alternating (A B, B A, ...) so a drift in outside load falls on both; the wall time is
the whole command's, start-up and final evaluation included. The table gives each run's wall
time, test error, steps and evaluations, the medians, and the ratio of median times.
`--precision fp32` runs both in fp32, so the ratio is the recipe's and the evaluations' alone
(what a CPU without fast bf16 gains); without it, each version's precision `auto`. Appended to
benchmarks/RESULTS.md (benchmarks/harness.py's record) only if the 1-minute load average
before the first run is at most the harness's IDLE_LOAD.

    python3 benchmarks/bench_quickstart.py --before 3ba03e9 --after .
    python3 benchmarks/bench_quickstart.py --before 3ba03e9 --after . --precision fp32
    python3 benchmarks/bench_quickstart.py --before . --after . --seeds 0 --iters 3 --no-record   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_study_versions import unpack  # noqa: E402
from harness import (Load, add_record_options, machine_was_idle, record,  # noqa: E402
                     results_path)


def train_once(src: Path, seed: int, out: Path, name: str, extra: list[str]) -> dict:
    """Wall seconds, test error, steps and evaluations of one `resnets train --seed S`."""
    command = [sys.executable, "-m", "resnets", "train", "--seed", str(seed), "--out",
               str(out), "--name", name, "--progress", "none", *extra]
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(src), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=environ)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"`{' '.join(command)}` failed:\n{result.stderr}")
    run = out / name
    summary = json.loads((run / "summary.json").read_text())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evaluations = {split: sum(r["split"] == split for r in records) for split in ("val", "test")}
    precision = json.loads((run / "config.json").read_text())["environment"]["precision"]
    return {"seconds": seconds, "test_err": summary["final"]["test_err"],
            "steps": summary["steps"], "evaluations": evaluations, "precision": precision}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git revision, or . (working tree)")
    parser.add_argument("--after", default=".", help="git revision, or . (default)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--precision", choices=("fp32", "bf16"),
                        help="force this precision on both (default: each version's auto)")
    parser.add_argument("--iters", type=int, help="steps per run (smoke tests only)")
    add_record_options(parser)
    args = parser.parse_args(argv)
    extra = (["--precision", args.precision] if args.precision else []) + \
        (["--iters", str(args.iters)] if args.iters else [])
    versions = {"before": args.before, "after": args.after}
    load = Load.start()
    runs: dict[str, list[dict]] = {label: [] for label in versions}
    with tempfile.TemporaryDirectory(prefix="bench-quickstart-") as folder:
        folder = Path(folder)
        sources = {label: unpack(revision, folder) for label, revision in versions.items()}
        for index, seed in enumerate(args.seeds):
            order = list(versions) if index % 2 == 0 else list(versions)[::-1]
            for label in order:
                run = train_once(sources[label], seed, folder, f"{label}-seed{seed}", extra)
                runs[label].append({"seed": seed, **run})
                print(f"{label} ({versions[label]}) seed {seed}: {run['seconds']:.1f} s, test "
                      f"{run['test_err']:.2f}%, {run['steps']} steps, evaluations "
                      f"{run['evaluations']}, {run['precision']}", flush=True)
    load.stop()
    title, table, notes = _table(args, versions, runs)
    print("\n".join(table + [""] + notes))
    if machine_was_idle(load):
        record(results_path(args), title, load=load, table=table, notes=notes,
               facts=[f"- precision: {args.precision or 'each version auto'}"])
    return 0


def _table(args, versions: dict, runs: dict) -> tuple[str, list[str], list[str]]:
    """The record's title, table (every run, then the medians) and the ratio of median times."""
    medians = {label: (statistics.median(r["seconds"] for r in rows),
                       statistics.median(r["test_err"] for r in rows))
               for label, rows in runs.items()}
    title = (f"bench_quickstart: `resnets train` wall time and test error, "
             f"{versions['before']} vs {versions['after']}")
    lines = ["| version | seed | wall s | test err % | steps | val evals | test evals | "
             "precision |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for label, rows in runs.items():
        for r in rows:
            lines.append(f"| {label} {versions[label]} | {r['seed']} | {r['seconds']:.1f} | "
                         f"{r['test_err']:.2f} | {r['steps']} | {r['evaluations']['val']} | "
                         f"{r['evaluations']['test']} | {r['precision']} |")
    for label, (seconds, err) in medians.items():
        lines.append(f"| **{label} median** | | **{seconds:.1f}** | **{err:.2f}** | | | | |")
    ratio = medians["before"][0] / max(medians["after"][0], 1e-9)
    return title, lines, [f"Median wall time before / after: **{ratio:.2f}x**."]


if __name__ == "__main__":
    raise SystemExit(main())
