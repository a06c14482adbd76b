"""A study's runs several at once (`--jobs N`) and across machines (`--shard I/N`).

Whoever trains a run (the `resnets study` process itself, one of its workers, or a study
process on another machine sharing the folder) goes through `degradation.train_run`: it takes
the run directory's lock without waiting (`RunDir.try_lock`), leaves the run alone if another
process holds it or it is finished, and otherwise trains it, or resumes it from its checkpoint.
The lock is the operating system's (flock), released when the process ends however it ends, so
a killed worker's run is free again and the next worker to come by resumes it. A run is
therefore never trained by two processes at once, and the report, drawn from the runs' metrics
alone, is the same whichever processes made them.

- `--jobs N`: up to N runs at once on this machine, each in a worker process of its own
  (`python -m resnets.study.worker STUDY_DIR RUN`, a new session, so a Ctrl-C reaches the
  study process alone, which passes it on once to each worker: each writes its checkpoint and
  stops). Each worker gets `worker_threads` CPU threads (its share of the cores) unless the
  study sets `threads`, and with several GPUs `worker_device` spreads the workers over them.
  A worker's output goes to `STUDY_DIR/logs/RUN.log`; the study process prints one line when a
  run starts and one when it ends. A worker whose study process disappears (killed) stops the
  same way, with a checkpoint, instead of training on unseen.
- `--shard I/N` (I from 1 to N): worker I of N machines sharing the study folder. It takes its
  own share first (the study's runs 0, 1, 2, ... dealt round robin: run k is worker k % N + 1's),
  then any other unfinished run nobody holds, so a slow or crashed worker's runs are taken
  over. The one that finds every run finished writes the report; one that ends while others
  still train says so. `--jobs` and `--shard` combine: a worker I/N with --jobs J trains J runs
  at once on its machine, its own share first.

`default_jobs` is the one place that decides --jobs when it is not given.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resnets.errors import UserError

POLL_S = 0.2  # how often the study process looks at its workers


def default_jobs(cores: int, gpus: int) -> int:
    """Runs trained at once when --jobs is not given, on a machine with `cores` CPU cores and
    `gpus` CUDA devices. 1 (one run after another, each with every core) until
    benchmarks/bench_study_jobs.py has measured where more is faster; change it here, and
    DEFAULT_JOBS_HELP with it."""
    return 1


DEFAULT_JOBS_HELP = "1, one run after another"  # what `resnets study --help` says of it


def check_jobs(jobs: Any) -> int:
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise UserError(f"jobs must be a whole number >= 1, got {jobs!r}")
    return jobs


@dataclass(frozen=True)
class Shard:
    """Worker `index` (1 to `count`) of `count` sharing one study folder."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, position: int) -> bool:
        """Whether the study's run at `position` (from 0) is in this worker's own share."""
        return position % self.count == self.index - 1


def parse_shard(value: str | Shard | None) -> Shard | None:
    """`"I/N"` (1 <= I <= N) as a Shard; None stays None."""
    if value is None or isinstance(value, Shard):
        return value
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(value))
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise UserError(f"shard must be I/N, worker I of N counted from 1 (1/2 and 2/2 for two "
                        f"machines), got {value!r}")
    return Shard(int(match[1]), int(match[2]))


def shard_order(runs: list, shard: Shard | None) -> list:
    """The order a worker tries the runs in: without a shard, the study's; with one, its own
    share first, then the others' (to take over a run nobody is training)."""
    if shard is None:
        return list(runs)
    own = [run for position, run in enumerate(runs) if shard.owns(position)]
    return own + [run for run in runs if run not in own]


def worker_threads(jobs: int, cores: int) -> int:
    """CPU threads for each of `jobs` runs trained at once on `cores` cores: an equal share.
    (torch's default, every core in each, makes them fight over the cores: bench_threads.)"""
    return max(1, cores // jobs)


def worker_device(setting: str, slot: int, gpus: int) -> str | None:
    """The device for the worker in `slot` (from 0): with several GPUs and a setting that
    leaves the choice to resnets ("auto", "cuda"), GPU slot % gpus, round robin; otherwise
    None, the run's own setting."""
    if gpus > 1 and setting in ("auto", "cuda"):
        return f"cuda:{slot % gpus}"
    return None


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def log_path(study_dir: str | Path, run_name: str) -> Path:
    """Where the attempts at a run are recorded, and a worker's output goes."""
    return Path(study_dir) / "logs" / f"{run_name}.log"


class StopSignals:
    """While active (in the main thread), Ctrl-C and SIGTERM are counted instead of raising, so
    the study process can pass them on to its workers and wait for their checkpoints."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: list[int] = []
        self._previous: dict = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame) -> None:
        self.received.append(signum)

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)


@dataclass
class _Worker:
    run: Any  # spec.Run
    slot: int
    process: subprocess.Popen
    log: Any  # the open log file, the worker's stderr
    started: float
    signalled: int = 0


class Workers:
    """Up to `jobs` worker processes, each training one run of the study in `study_dir`."""

    def __init__(self, study_dir: str | Path, jobs: int, *, progress: str = "lines"):
        self.study_dir, self.jobs, self.progress = Path(study_dir), jobs, progress
        self.running: dict[int, _Worker] = {}  # slot -> worker

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc) -> None:
        """Workers still running when the study process leaves (its own error): stop them as
        Ctrl-C would, then wait for them."""
        for worker in self.running.values():
            self._signal(worker)
        deadline = time.monotonic() + 120
        for worker in list(self.running.values()):
            try:
                worker.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
            self._close(worker)
        self.running.clear()

    def free_slot(self) -> int | None:
        return next((slot for slot in range(self.jobs) if slot not in self.running), None)

    def busy(self) -> bool:
        return bool(self.running)

    def start(self, run, slot: int, *, threads: int | None, device: str | None) -> None:
        import resnets

        command = [sys.executable, "-m", "resnets.study.worker", str(self.study_dir),
                   run.name, "--progress", self.progress]
        if threads is not None:
            command += ["--threads", str(threads)]
        if device is not None:
            command += ["--device", device]
        # the worker imports the very resnets this process runs, installed or not
        package_root = str(Path(resnets.__file__).resolve().parents[1])
        environ = {**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        from resnets.train.device import SIBLING_LOAD_ENV

        # the other workers' threads: load of ours, not someone else's (the busy check)
        each = threads or max(1, (os.cpu_count() or 1) // self.jobs)
        environ[SIBLING_LOAD_ENV] = str(len(self.running) * each)  # those running now
        path = log_path(self.study_dir, run.name)
        log = open(path, "a", encoding="utf-8")
        try:
            process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=log, env=environ, start_new_session=True)
        except OSError as error:
            log.close()
            raise UserError(f"cannot start a worker process ({error.strerror})") from None
        self.running[slot] = _Worker(run, slot, process, log, time.monotonic())

    def wait(self, stop: StopSignals) -> tuple[Any, dict, float] | None:
        """The next worker to end: (run, outcome, seconds). Signals the study process received
        are passed on to every worker first (once each: a second Ctrl-C stops them at once, as
        it stops `resnets train`); returns None when there was one, so the caller can stop
        starting runs."""
        while True:
            if any(w.signalled < len(stop.received) for w in self.running.values()):
                for worker in self.running.values():
                    while worker.signalled < len(stop.received):
                        self._signal(worker)
                return None
            for slot, worker in list(self.running.items()):
                if worker.process.poll() is not None:
                    del self.running[slot]
                    return worker.run, self._outcome(worker), time.monotonic() - worker.started
            time.sleep(POLL_S)

    def _signal(self, worker: _Worker) -> None:
        worker.signalled += 1
        if worker.process.poll() is None:
            try:
                os.kill(worker.process.pid, signal.SIGINT)
            except ProcessLookupError:
                pass

    def _outcome(self, worker: _Worker) -> dict:
        output = worker.process.stdout.read().decode("utf-8", "replace").strip()
        self._close(worker)
        try:
            outcome = json.loads(output.splitlines()[-1])
        except (IndexError, ValueError):
            code = worker.process.returncode
            how = (f"signal {signal.Signals(-code).name}" if code < 0 and -code in
                   signal.valid_signals() else f"status {code}")
            outcome = {"outcome": "failed", "message": f"its worker process ended with {how} "
                       f"and no result"}
        outcome["log"] = str(log_path(self.study_dir, worker.run.name))
        return outcome

    @staticmethod
    def _close(worker: _Worker) -> None:
        for stream in (worker.process.stdin, worker.process.stdout, worker.log):
            if stream is not None and not stream.closed:
                stream.close()
