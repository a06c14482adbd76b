"""A study's wall time with two versions of resnets, side by side (issue #14: the default
study before and after the faster step and inference path).

Each version is a git revision of this repository, unpacked to a temporary folder (`git
archive`), or "." for the working tree; each round runs the same `resnets study` from an empty
folder with each version, order alternating (A B, B A, ...), so a slow drift in outside load
falls on both. Every version gets its own empty TorchInductor cache (TORCHINDUCTOR_CACHE_DIR)
and compile record, so the first round of a version that compiles pays the compile and later
rounds show what the on-disk cache saves.

The small study by default (plain and residual 20 and 56 on the bundled digits, seed 0, 2
epochs: four runs), the same study file for both versions; `--default-study` times what a bare
`resnets study` trains with each version: each its own default study (16 runs; the recipe is
the version's own, which is what a user waits for). `--keep-after DIR` copies the after
version's last study folder (runs, figures, table) to DIR. Appended to benchmarks/RESULTS.md only if the 1-minute load average before the first
round is at most IDLE_LOAD (benchmarks/harness.py).

    python3 benchmarks/bench_study_versions.py --before d494a3d --after .
    python3 benchmarks/bench_study_versions.py --before d494a3d --after . --default-study --rounds 1
    python3 benchmarks/bench_study_versions.py --before HEAD --iters 2 --rounds 1 --no-record
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_study_jobs import run_once, study_file, study_words  # noqa: E402
from harness import Load, add_record_options, machine_was_idle, record, results_path  # noqa: E402


def unpack(revision: str, folder: Path) -> Path:
    """The `src` folder of `revision` ("." : the working tree's)."""
    if revision == ".":
        return ROOT / "src"
    target = folder / f"rev-{revision}"
    target.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "src"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target / "src"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git revision, or . (working tree)")
    parser.add_argument("--after", default=".", help="git revision, or . (default)")
    parser.add_argument("--kinds", nargs="+", default=["plain", "resnet"])
    parser.add_argument("--depths", type=int, nargs="+", default=[20, 56])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=float, default=2.0, help="per run (default: 2)")
    parser.add_argument("--iters", type=int, help="steps per run instead of --epochs")
    parser.add_argument("--default-study", action="store_true",
                        help="time the bundled default study instead (ignores the four above)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds (median reported)")
    parser.add_argument("--keep-after", metavar="DIR",
                        help="copy the after version's last study folder here")
    add_record_options(parser)
    return parser


def time_rounds(args, versions: dict[str, str]) -> tuple[dict[str, list[float]], int]:
    """Wall seconds of the study with each version per round (order alternating), and the
    study's number of runs."""
    from resnets.study.spec import default_study, read_study
    from resnets.train.progress import format_duration

    seconds: dict[str, list[float]] = {label: [] for label in versions}
    with tempfile.TemporaryDirectory(prefix="bench-study-versions-") as folder:
        folder = Path(folder)
        sources = {label: unpack(revision, folder) for label, revision in versions.items()}
        caches = {label: folder / f"inductor-{label}" for label in versions}
        study = None if args.default_study else study_file(args, folder)
        for round_number in range(args.rounds):
            order = list(versions) if round_number % 2 == 0 else list(versions)[::-1]
            for label in order:
                wall, _ = run_once(args, study, 1, folder, f"{label}-round{round_number}",
                                   src=sources[label],
                                   environ={"TORCHINDUCTOR_CACHE_DIR": str(caches[label])})
                seconds[label].append(wall)
                print(f"round {round_number + 1}, {label} ({versions[label]}): "
                      f"{format_duration(wall)}", flush=True)
        if args.keep_after:
            shutil.copytree(folder / f"after-round{args.rounds - 1}", args.keep_after,
                            dirs_exist_ok=True)
        runs = len((default_study() if study is None else read_study(study)).runs())
        return seconds, runs


def main(argv: list[str] | None = None) -> int:
    from resnets.train.progress import format_duration

    args = _parser().parse_args(argv)
    versions = {"before": args.before, "after": args.after}
    load_average = Load.start()
    seconds, runs = time_rounds(args, versions)
    load_average.stop()

    base = statistics.median(seconds["before"])
    table = ["| version | revision | runs | wall time (median) | each round, s | speed vs "
             "before |", "|---|---|---:|---:|---|---:|",
             *[f"| {label} | {versions[label]} | {runs} | "
               f"{format_duration(statistics.median(seconds[label]))} | "
               f"{', '.join(f'{s:.0f}' for s in seconds[label])} | "
               f"{base / statistics.median(seconds[label]):.2f}x |" for label in versions]]
    print("\n".join([*table, load_average.summary()]))
    if machine_was_idle(load_average):
        record(results_path(args), f"bench_study_versions: a study's wall time, {args.before} "
               f"vs {args.after}", load=load_average, device="auto", table=table, facts=[
                   f"- method: {study_words(args)}; each a whole `resnets study` from an empty "
                   f"folder, one run at a time, each version with its own empty TorchInductor "
                   f"cache at the start; {args.rounds} rounds (order alternating)"])
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
