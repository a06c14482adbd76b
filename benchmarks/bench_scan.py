"""Time to scan an ImageNet-sized tree (1,281,167 files in 1,000 class folders) and the memory
its file list takes.

The tree is made of empty files: the scan decides by name (an extension Pillow reads) and
never opens a file, so the contents do not matter. Names are ImageNet's own pattern,
train/n0XXXXXXX/n0XXXXXXX_K.JPEG, and val/ holds 50 files per class (ImageNet's 50,000).
Making the tree is timed too but is not the measure (os.open + close per file).

Measured: `resnets.data.load("folder:ROOT", "trainval", augment="paper")` (scan train/, pack
the file list; nothing is decoded) and `load(..., "test")` (val/), median of --repeats, with
the directory entries in the page cache (the tree was just written or listed: a warm scan, what
every run after the first sees); memory: the file list's own bytes (`FileList.nbytes`) and the
Python heap the loaded split keeps, traced with tracemalloc in a separate, untimed load.
For a cold scan, drop the caches between runs (as root: `sync; echo 3 >
/proc/sys/vm/drop_caches`) and pass --repeats 1.

    python3 benchmarks/bench_scan.py --dir /tmp/imagenet-names --keep   # 1.28M files, kept for reruns
    python3 benchmarks/bench_scan.py --count 20000 --no-record        # smoke test

Prints a table and appends it, with hardware, command, date and load average, to
benchmarks/RESULTS.md (unless --no-record). Goal (issue #11): under 30 s for 1.28M files.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from harness import Load, Spread, add_record_options, record, results_path, time_it  # noqa: E402
from resnets.data import load  # noqa: E402

IMAGENET_TRAIN = 1_281_167
IMAGENET_CLASSES = 1_000


def make_tree(root: Path, count: int, classes: int, val_per_class: int) -> float:
    """Empty files in ImageNet's layout; returns the seconds it took (0 if already there)."""
    marker = root / f".made-{count}-{classes}-{val_per_class}"
    if marker.exists():
        return 0.0
    start = time.perf_counter()
    per_class, extra = divmod(count, classes)
    for k in range(classes):
        wnid = f"n{k + 1:08d}"
        for part, n in (("train", per_class + (k < extra)), ("val", val_per_class)):
            folder = root / part / wnid
            folder.mkdir(parents=True, exist_ok=True)
            prefix = str(folder / wnid) + ("_" if part == "train" else "_val_")
            for i in range(n):
                os.close(os.open(f"{prefix}{i}.JPEG", os.O_CREAT | os.O_WRONLY, 0o644))
    marker.touch()
    return time.perf_counter() - start


def timed_load(root: Path, split: str, repeats: int) -> tuple[Spread, int]:
    """Seconds of `repeats` scans of `split` (a garbage collection before each), and its size."""
    sizes = []

    def scan():
        sizes.append(len(load(f"folder:{root}", split, augment="paper", val_fraction=0)))

    return time_it(scan, runs=repeats, setup=gc.collect), sizes[-1]


def traced_memory(root: Path, split: str) -> tuple[int, int, int]:
    """(bytes the loaded split keeps on the Python heap, peak while loading, FileList.nbytes)."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    dataset = load(f"folder:{root}", split, augment="paper", val_fraction=0)
    kept, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return kept - before, peak - before, dataset.files.nbytes()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=IMAGENET_TRAIN, help="training files (default: ImageNet's 1,281,167)")
    parser.add_argument("--classes", type=int, default=IMAGENET_CLASSES, help="class folders (default: 1,000)")
    parser.add_argument("--val-per-class", type=int, default=50, help="files per class in val/ (default: 50)")
    parser.add_argument("--repeats", type=int, default=3, help="timed scans (median reported)")
    parser.add_argument("--dir", help="where to make the tree (default: a temporary folder, removed after)")
    parser.add_argument("--keep", action="store_true", help="keep the tree in --dir for another run")
    add_record_options(parser)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")  # the tree has no classes.txt, nothing else to say

    scratch = None if args.dir else tempfile.mkdtemp(prefix="resnets-scan-")
    root = Path(args.dir or scratch)
    load_average = Load.start()
    try:
        made = make_tree(root, args.count, args.classes, args.val_per_class)
        if made:
            print(f"made {args.count:,} + {args.classes * args.val_per_class:,} empty files in "
                  f"{made:.1f} s under {root}", flush=True)
        header = ("| split | files | scan s (median, min-max) | file list MB (FileList.nbytes) | "
                  "Python heap kept MB | peak while scanning MB |\n|---|---:|---:|---:|---:|---:|")
        rows = []
        print(header, flush=True)
        for split, folder in (("trainval", "train/"), ("test", "val/")):
            times, size = timed_load(root, split, args.repeats)
            kept, peak, packed = traced_memory(root, split)
            rows.append(f"| {folder} | {size:,} | {times.cell('.2f')} | "
                        f"{packed / 1e6:.1f} | {kept / 1e6:.1f} | {peak / 1e6:.1f} |")
            print(rows[-1], flush=True)
    finally:
        if scratch or not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    record(results_path(args), "bench_scan: scanning an ImageNet-sized tree",
           load=load_average.stop(), table=[header, *rows],
           hardware_note=f"; file system of the tree: {filesystem(root)}", facts=[
               f"- data: {args.count:,} empty train files in {args.classes:,} class folders, "
               f"{args.val_per_class} per class in val/; warm directory cache; median of "
               f"{args.repeats} scans (min-max); memory traced in one more, untimed, load"])
    return 0


def filesystem(path: Path) -> str:
    """The file system type holding `path` (from /proc/mounts), or "unknown"."""
    try:
        mounts = [line.split() for line in open("/proc/mounts")]
    except OSError:
        return "unknown"
    target, best = str(path.resolve()), ("", "unknown")
    for fields in mounts:
        if len(fields) > 2 and target.startswith(fields[1]) and len(fields[1]) > len(best[0]):
            best = (fields[1], fields[2])
    return best[1]


if __name__ == "__main__":
    raise SystemExit(main())
