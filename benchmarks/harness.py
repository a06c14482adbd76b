"""The one harness every benchmark script uses: what a record names, how it times, where it writes.

- `hardware()`: the CPU model with the flags that decide precision `auto` (AMX, AVX-512 bf16,
  AVX-512, AVX2), the logical CPUs, torch's thread count, and the GPU when there is one;
  `versions()`: torch (and any other library timed), Python and the device.
- `Load`: the 1-minute load average when the measuring began and when it ended, with a warning
  when the machine was not idle at the start (other work is then measured too).
- `time_it(fn, warmup=, runs=, calls= | seconds=)`: untimed warm-up calls, then timed runs; a
  `Spread` (median, min, max) of the runs' seconds per call. `time_fed(feed, step)`: a step
  fed by a loader, the wait and the step apart. `time_command(command, runs=)`: a whole
  subprocess.
- `record(path, title, load=, table=, ...)`: the RESULTS.md record (date, hardware, versions,
  load before/after, command, method, table, notes), appended in one write.
  `add_record_options(parser)` gives every script `--results PATH` and `--no-record`: figures
  taken on a busy machine (a trial run) must not be recorded.
- `--malloc keep|default`: what glibc does with freed memory in the benchmark's process.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))  # this checkout's resnets, as every script runs it

from resnets.train.device import available_cores, keep_freed_memory  # noqa: E402

RESULTS = Path(__file__).resolve().with_name("RESULTS.md")
RESULTS_HEADER = "# Benchmark results\n\nEach entry: what was run, where, and the figures it printed.\n\n"

BUSY_LOAD_PER_CORE = 0.5  # a record warns when the 1-minute load at the start is above this x cores
# Whole-machine benchmarks (studies, trainings at once: every core in use) record only when the
# 1-minute load at the start is at most this, whatever the core count: half a busy core shows.
IDLE_LOAD = 0.5


# ------------------------------------------------------------------ what the record names
def hardware() -> str:
    """The machine in one line: CPU model and flags, logical CPUs, torch threads, GPU."""
    name, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            lines = cpuinfo.read().splitlines()
        name = next((l.split(":", 1)[1].strip() for l in lines if l.startswith("model name")), name)
        flags = next((l.split(":", 1)[1].split() for l in lines if l.startswith("flags")), [])
    except OSError:
        pass
    text = (f"{name} (AMX: {'yes' if 'amx_bf16' in flags else 'no'}, AVX-512 bf16: "
            f"{'yes' if 'avx512_bf16' in flags else 'no'}, AVX-512: "
            f"{'yes' if 'avx512f' in flags else 'no'}, AVX2: "
            f"{'yes' if 'avx2' in flags else 'no'}), {os.cpu_count()} logical CPUs, "
            f"torch threads {torch.get_num_threads()}")
    if torch.cuda.is_available():
        text += f"; GPU {torch.cuda.get_device_name()}"
    return text


def versions(device: object = None, others: dict[str, str] | None = None) -> str:
    """'torch 2.x, [library version, ...] Python 3.x[, device D]'."""
    parts = [f"torch {torch.__version__}", *(f"{k} {v}" for k, v in (others or {}).items()),
             f"Python {platform.python_version()}"]
    return ", ".join(parts + ([f"device {device}"] if device is not None else []))


def command_line() -> str:
    """The command that is running, as a user would type it again."""
    return "python3 " + " ".join(shlex.quote(a) for a in sys.argv)


def utc_date() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


# ------------------------------------------------------------------ load average
def load_now() -> float:
    """The 1-minute load average (NaN where the OS reports none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows; some containers
        return float("nan")


@dataclass
class Load:
    """The 1-minute load average before the measuring and after it, on `cores` cores."""

    before: float
    cores: int
    after: float | None = None

    @classmethod
    def start(cls) -> Load:
        """The load now; says so at once (stdout) when the machine is not idle."""
        load = cls(load_now(), available_cores())
        if load.busy:
            print(f"warning: {load.warning()}", flush=True)
        return load

    def stop(self) -> Load:
        self.after = load_now()
        return self

    @property
    def busy(self) -> bool:
        return self.before > BUSY_LOAD_PER_CORE * self.cores

    def warning(self) -> str:
        return (f"the machine was not idle at the start (1-min load {self.before:.2f} > "
                f"{BUSY_LOAD_PER_CORE} x {self.cores} cores): other work was measured too")

    def lines(self) -> list[str]:
        """The record's load line, and a warning line when the machine was not idle."""
        after = self.after if self.after is not None else load_now()
        return ([f"- load average before/after (1 min): {self.before:.2f} / {after:.2f}"]
                + ([f"- WARNING: {self.warning()}"] if self.busy else []))

    def summary(self) -> str:
        return (f"load average (1 min) before / after: {self.before:.2f} / "
                f"{self.after if self.after is not None else load_now():.2f}; {self.cores} cores")


def machine_was_idle(load: Load, problems: Sequence[str] = ()) -> bool:
    """For whole-machine benchmarks: True when the load before was at most IDLE_LOAD and no
    other `problems` were seen; else prints why the figures are not recorded."""
    found = ([f"load {load.before:.2f} > {IDLE_LOAD} before the first round"]
             if not load.before <= IDLE_LOAD else []) + list(problems)
    if found:
        print("NOT IDLE: other load was measured too; not recorded (" + "; ".join(found) + ")")
    return not found


# ------------------------------------------------------------------ timing
@dataclass(frozen=True)
class Spread:
    """Repeated measurements: their median and range."""

    values: tuple[float, ...]

    def __init__(self, values) -> None:
        object.__setattr__(self, "values", tuple(values))

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    def per_second(self, work: float) -> Spread:
        """Seconds per call turned into `work` per second (images/s from seconds per batch)."""
        return Spread(work / value for value in self.values)

    def cell(self, spec: str = ",.0f") -> str:
        """'median (min-max)' for a table."""
        return f"{self.median:{spec}} ({self.low:{spec}}-{self.high:{spec}})"


def synchronizer(device: torch.device | str) -> Callable[[], None] | None:
    """What waits for the device's queued work (CUDA); None where calls return when done."""
    return torch.cuda.synchronize if torch.device(device).type == "cuda" else None


def time_it(fn: Callable[[], object], *, warmup: int = 0, runs: int = 1, calls: int = 1,
            seconds: float | None = None, setup: Callable[[], object] | None = None,
            sync: Callable[[], None] | None = None,
            clock: Callable[[], float] = time.perf_counter) -> Spread:
    """Seconds per call of `fn`: `warmup` untimed calls, then `runs` timed runs of `calls`
    calls each; the runs' Spread. With `seconds`, a run is instead as many calls as the last
    warm-up call says fill `seconds` (at least one; at least one warm-up call then).
    `setup` runs, untimed, before each timed run; `sync` waits for the device at both ends."""
    last = 0.0
    for _ in range(max(1, warmup) if seconds is not None else warmup):
        start = clock()
        fn()
        if sync is not None:
            sync()
        last = clock() - start
    if seconds is not None:
        calls = max(1, round(seconds / max(last, 1e-9)))
    times = []
    for _ in range(runs):
        if setup is not None:
            setup()
        if sync is not None:
            sync()
        start = clock()
        for _ in range(calls):
            fn()
        if sync is not None:
            sync()
        times.append((clock() - start) / calls)
    return Spread(times)


def time_fed(feed: Callable[[], object], step: Callable[[object], object], *, warmup: int = 0,
             runs: int = 1, clock: Callable[[], float] = time.perf_counter
             ) -> tuple[Spread, Spread]:
    """A step fed by a loader, its two parts timed apart: `warmup` untimed steps, then `runs`
    timed ones; the Spreads of the seconds waiting for `feed()` and of those in `step(fed)`."""
    waits, steps = [], []
    for index in range(warmup + runs):
        start = clock()
        fed = feed()
        got = clock()
        step(fed)
        if index >= warmup:
            waits.append(got - start)
            steps.append(clock() - got)
    return Spread(waits), Spread(steps)


def time_command(command: Sequence[str], *, runs: int = 1, env: dict | None = None,
                 check: bool = True, clock: Callable[[], float] = time.perf_counter
                 ) -> tuple[Spread, subprocess.CompletedProcess]:
    """Wall seconds of `runs` runs of a whole subprocess (start-up included), and the last
    run's result (its output captured). A failing run ends the series: with `check`, exits
    with its stderr; without, its time and result are returned for the caller to report."""
    times = []
    for _ in range(runs):
        start = clock()
        result = subprocess.run(list(command), capture_output=True, text=True, env=env)
        times.append(clock() - start)
        if result.returncode != 0:
            if check:
                raise SystemExit(f"`{' '.join(map(str, command))}` failed:\n{result.stderr}")
            break
    return Spread(times), result


# ------------------------------------------------------------------ the RESULTS.md record
def add_record_options(parser: argparse.ArgumentParser, quick: bool = False) -> None:
    """--results PATH and --no-record (`quick`: the script has a --quick that records nothing)."""
    parser.add_argument("--results", default=None,
                        help="markdown file the record is appended to ('' for none; default "
                        f"benchmarks/RESULTS.md{', none with --quick' if quick else ''})")
    parser.add_argument("--no-record", action="store_true",
                        help="append nothing (a trial run: figures from a busy machine must "
                        "not be recorded)")


def results_path(args: argparse.Namespace, record_by_default: bool = True) -> Path | None:
    """Where `add_record_options`' flags say the record goes; None for nowhere."""
    if args.no_record or args.results == "":
        return None
    if args.results is None:
        return RESULTS if record_by_default else None
    return Path(args.results)


def record_block(title: str, *, load: Load, table: Sequence[str], facts: Sequence[str] = (),
                 notes: Sequence[str] = (), device: object = None,
                 others: dict[str, str] | None = None, hardware_note: str = "") -> str:
    """One record, in the form every record in RESULTS.md has: a dated title; hardware,
    versions, load before/after, command, then `facts` ("- method: ..."); the table; notes."""
    head = [f"\n## {title} ({utc_date()})\n", f"- hardware: {hardware()}{hardware_note}",
            f"- {versions(device, others)}", *load.lines(), f"- command: `{command_line()}`",
            *facts]
    body = [*table, *(["", *notes] if notes else [])]
    return "\n".join(head) + "\n\n" + "\n".join(body) + "\n"


def record(path: Path | str | None, title: str, **parts) -> str:
    """Append `record_block(title, **parts)` to `path` (nothing when None); return the block."""
    block = record_block(title, **parts)
    if path:
        append(path, block)
    return block


def append(path: Path | str, block: str) -> None:
    """Append `block` to `path` in one write (O_APPEND: records written at once do not
    interleave); a new file starts with the RESULTS.md header."""
    path = Path(path)
    text = block if path.exists() and path.stat().st_size else RESULTS_HEADER + block.lstrip("\n")
    data = text.encode("utf-8")
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(descriptor, data)
        while written < len(data):  # only on a full disk or a signal: finish what is left
            written += os.write(descriptor, data[written:])
    finally:
        os.close(descriptor)
    print(f"appended to {path}")


# ------------------------------------------------------------------ malloc
MALLOC_CHOICES = ("keep", "default")


def add_malloc_option(parser) -> None:
    """--malloc keep|default: what glibc does with freed memory in the benchmark's process."""
    parser.add_argument(
        "--malloc", choices=MALLOC_CHOICES, default="keep",
        help="keep (default): glibc keeps freed memory for reuse, as every `resnets` command "
        "that runs networks has it (resnets.train.device.keep_freed_memory); default: glibc's "
        "own behaviour, as in a script of the user's. It holds for every row of the run")


def apply_malloc(choice: str) -> str:
    """Set what `--malloc` asked for; the record's line saying what it was."""
    if choice == "keep":
        applied = "" if keep_freed_memory() else ": NOT applied here"
        return ("- malloc: glibc keeps freed memory for reuse in this process, every row "
                f"(keep_freed_memory(), as `resnets` commands do){applied}")
    return "- malloc: glibc's defaults (freed blocks over its mmap threshold go back to the OS)"
