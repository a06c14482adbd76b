"""The paper's central experiment: plain and residual twins trained at several depths.

A study (`spec.Study`: kinds, depths, seeds, preset, training overrides) is saved as
`studies/NAME/study.toml`. Each (kind, depth, seed) is an ordinary run directory under
`studies/NAME/runs/`, trained by `resnets.train.fit` with the same recipe and budget. Running a
study again skips finished runs (their `summary.json` exists) and resumes an unfinished one
from its last checkpoint, so a killed study loses at most the steps since that checkpoint.

Runs may be trained several at once (`jobs`) and by several processes sharing the folder
(`shard`): each run is claimed with its run directory's lock first, so none is trained twice
at once (parallel.py). Every attempt at a run is recorded in `studies/NAME/logs/RUN.log`.
"""
from __future__ import annotations

import os
import shutil
import socket
import sys
import time
from collections import Counter
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from resnets.atomic import WriteError, writable_folder, write_text
from resnets.errors import UserError
from resnets.rundir import RunDir
from resnets.study.spec import (Run, Study, bundled_studies, default_study,  # noqa: F401
                                read_study, resolve_study, study_from_dict)

try:
    import fcntl
except ImportError:  # Windows: no advisory locks
    fcntl = None

MAX_LOOKS = 3  # times one call may try a run that another process took just before it


def run_dirs(study_dir: str | Path, study: Study) -> dict:
    """Each run of `study` with its run directory under `study_dir`."""
    return {run: RunDir(Path(study_dir) / "runs" / run.name) for run in study.runs()}


def prepare(study: Study, root: str | Path = "studies") -> Path:
    """Create (or reopen) the study directory. A saved study must match the one asked for,
    unless none of its runs finished: then the new definition replaces it (a first attempt
    that failed on a mistake can be rerun with the mistake fixed) and its unfinished runs are
    removed, since they were trained to the old definition."""
    study_dir = Path(root) / study.name
    saved_path = study_dir / "study.toml"
    if saved_path.is_file():
        saved = read_study(saved_path)
        if saved != study:
            started = run_dirs(study_dir, saved)
            if any(run.held_elsewhere() for run in started.values()):
                raise UserError(
                    f"{study_dir} holds a different study ({saved_path}) that another resnets "
                    f"process is training; wait for it, or choose another --name")
            if any(run.finished() for run in started.values()):
                raise UserError(
                    f"{study_dir} holds a different study ({saved_path}) with finished runs; "
                    f"choose another --name, or run `resnets study --name {study.name}` with no "
                    f"other settings to continue it")
            for run in started.values():
                if run.exists() and run.ours():
                    shutil.rmtree(run.path)
            write_text(saved_path, study.to_toml())
    else:
        write_text(saved_path, study.to_toml())
    writable_folder(study_dir / "runs")
    writable_folder(study_dir / "logs")
    return study_dir




def run_study(
    study: Study,
    root: str | Path = "studies",
    *,
    progress: str = "auto",
    log: Callable[[str], None] | None = None,
    jobs: int | None = None,
    shard: str | None = None,
    on_run_done: Callable[[Path], None] | None = None,
) -> Path:
    """Train every unfinished run of `study` that no other process is training, then, once
    every run is finished, write its report. Returns the study dir.

    jobs: runs trained at once, each in a worker process of its own with its share of the
    cores (default: `parallel.default_jobs`; 1 trains them one after another in this process).
    shard: "I/N": this process is worker I of N sharing the study folder; it trains its own
    share of the runs first, then helps with the others'. Runs another process holds are left
    to it: the process that sees the last run finished writes the report.
    on_run_done(study_dir): called after each run this call trains to the end (the command
    line refreshes the study's page with it).
    """
    from resnets.study.parallel import (check_jobs, default_jobs, gpu_count, parse_shard,
                                        shard_order)
    from resnets.train.device import available_cores
    from resnets.train.distributed import world_from_environment

    if world_from_environment().distributed:  # its ranks would each take runs, then wait
        raise UserError("a study does not run under torchrun: each run is trained by one "
                        "process; use --jobs N for several processes on this machine, or "
                        "--shard I/N on each of several machines sharing the study folder")
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    shard = parse_shard(shard)
    cores = available_cores()
    jobs = default_jobs(cores, gpu_count()) if jobs is None else check_jobs(jobs)
    study_dir = prepare(study, root)
    directories = run_dirs(study_dir, study)
    session = _Session(study, study_dir, directories, shard_order(list(directories), shard),
                       log, on_run_done)
    if jobs == 1:
        _train_here(session, progress)
    else:
        _train_in_workers(session, jobs, cores, progress)
    return session.finish(jobs)


def all_finished(study_dir: str | Path, study: Study) -> bool:
    return all(run.finished() for run in run_dirs(study_dir, study).values())


def train_run(study: Study, study_dir: str | Path, run: Run, *, progress: str = "auto",
              threads: int | None = None, device: str | None = None,
              announce: Callable[[bool], None] | None = None) -> dict[str, Any]:
    """Train (or resume) one run of a study, unless another process holds it or it is
    finished. Returns {"outcome": "trained" | "resumed" | "held" | "finished"}, with
    "test_err" for a run trained here. threads/device replace the recipe's (they do not change
    what is computed); `announce(resume)` is called once the run is this process's."""
    from resnets.train import TrainingInterrupted, fit
    from resnets.train.autocompile import planned_runs

    run_dir = RunDir(Path(study_dir) / "runs" / run.name).create()
    with run_dir.try_lock() as mine:
        if not mine:
            return {"outcome": "held"}
        if run_dir.finished():
            return {"outcome": "finished"}
        resume = run_dir.resumable()  # else fit starts afresh, even over a run that died early
        config = study.config_for(run)
        changes = {key: value for key, value in (("threads", threads), ("device", device))
                   if value is not None}
        config = config.replace(**changes) if changes else config
        if announce is not None:
            announce(resume)
        verb = "resuming" if resume else "training"
        _note(study_dir, run, f"{verb} {run.name} on {socket.gethostname()}, process "
              f"{os.getpid()} (threads {config.threads or 'default'}, device {config.device})")
        started = time.monotonic()
        # The runs left, this one first: compile "auto" counts those that reuse its compiled
        # units (the same kind at any depth), which share its compile time (the on-disk cache
        # serves them in this process and in other workers).
        plan = [f"{run.kind}{run.depth}"] + [f"{other.kind}{other.depth}" for other, other_dir
                                             in run_dirs(study_dir, study).items()
                                             if other != run and not other_dir.finished()]
        try:
            with planned_runs(plan):
                summary = fit(config, run_dir.path, resume=resume, progress=progress)
        except TrainingInterrupted as interrupted:
            _note(study_dir, run, f"stopped: {interrupted}")
            raise
        except BaseException as error:
            _note(study_dir, run, f"failed: {error}" if isinstance(error, UserError)
                  else f"stopped by {type(error).__name__}")
            raise
        seconds = time.monotonic() - started
        _note(study_dir, run, f"finished in {seconds:.0f} s")
    return {"outcome": "resumed" if resume else "trained",
            "test_err": summary.get("final", {}).get("test_err")}


def _note(study_dir: str | Path, run: Run, text: str) -> None:
    """One line in the run's log (logs/RUN.log): what this process did with the run, and when."""
    from resnets.study.parallel import log_path

    path = log_path(study_dir, run.name)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    try:
        with open(path, "a", encoding="utf-8") as file:
            file.write(f"{stamp} {text}\n")
    except OSError as error:
        raise WriteError(error, path) from None


@contextmanager
def _report_lock(study_dir: Path) -> Iterator[None]:
    """One process at a time writes a study's report (two workers may both see it finished)."""
    if fcntl is None:
        yield
        return
    with open(study_dir / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


class _Session:
    """One `run_study` call: the runs it looks at, in its order; what it trained; its lines."""

    def __init__(self, study: Study, study_dir: Path, directories: dict, order: list,
                 log: Callable[[str], None],
                 on_run_done: Callable[[Path], None] | None = None):
        self.study, self.study_dir, self.directories = study, study_dir, directories
        self.order, self.log, self.on_run_done = order, log, on_run_done
        self.runs = list(directories)
        self.earlier = {run for run, run_dir in directories.items() if run_dir.finished()}
        self.started = time.monotonic()
        self.looks: Counter = Counter()  # times this call tried each run
        self.taken_first: set = set()  # runs another process took between a look and a try
        self.trained: list = []  # runs this call trained to the end
        self.layers_done = 0  # depth x runs trained by this call, for the time left
        self.told: set = set()  # (run, what) lines already printed

    def tag(self, run: Run) -> str:
        return f"[{self.runs.index(run) + 1}/{len(self.runs)}]"

    def next_run(self) -> Run | None:
        """The first run, in this call's order, that is unfinished, free (no other process
        holds it) and not yet tried by this call; None when there is none. Looked up afresh
        each time, so a run a killed worker left is taken as soon as it is free."""
        for run in self.order:
            run_dir = self.directories[run]
            if run_dir.finished():
                if run in self.earlier:
                    self._tell(run, f"{run.name}: finished earlier, skipped")
                elif not self.looks[run]:
                    self._tell(run, f"{run.name}: finished by another process")
                continue
            if self.looks[run] >= (MAX_LOOKS if run in self.taken_first else 1):
                continue
            if run_dir.held_elsewhere():
                self._tell(run, f"{run.name}: another process is training it, skipped",
                           what="held")
                continue
            return run
        return None

    def _tell(self, run: Run, text: str, what: str = "done") -> None:
        if (run, what) not in self.told:
            self.told.add((run, what))
            self.log(f"{self.tag(run)} {text}")

    def elapsed(self) -> str:
        """Time since the call began, and the time left at the rate it has trained so far."""
        from resnets.train.progress import format_duration

        elapsed = time.monotonic() - self.started
        text = f"elapsed {format_duration(elapsed)}"
        if self.layers_done:
            left = sum(run.depth for run in self.runs if not self.directories[run].finished())
            text += f", about {format_duration(elapsed / self.layers_done * left)} left"
        return text

    def ended(self, run: Run, outcome: dict, seconds: float | None = None) -> None:
        """What a try at `run` came to (train_run's outcome)."""
        from resnets.train.progress import format_duration

        kind = outcome["outcome"]
        if kind in ("trained", "resumed"):
            self.trained.append(run)
            self.layers_done += run.depth
            if seconds is not None:
                error = outcome.get("test_err")
                result = f": test error {error:.2f}%" if error is not None else ""
                self.log(f"{self.tag(run)} {run.name} finished in {format_duration(seconds)}"
                         f"{result} ({self.elapsed()})")
            if self.on_run_done is not None:
                self.on_run_done(self.study_dir)
        elif kind == "held":
            self.taken_first.add(run)
            self._tell(run, f"{run.name}: another process took it first, skipped", what="held")
        elif kind == "finished":
            self._tell(run, f"{run.name}: finished by another process")

    def finish(self, jobs: int) -> Path:
        """Write the report if every run is finished; else say who still has runs."""
        from resnets.study.report import write_report
        from resnets.train.progress import format_duration

        study_dir, name = self.study_dir, self.study.name
        left = [run for run in self.runs if not self.directories[run].finished()]
        if left:
            names = ", ".join(run.name for run in left)
            if all(self.directories[run].held_elsewhere() for run in left):
                self.log(f"study {name}: nothing left for this process; {len(left)} of "
                         f"{len(self.runs)} runs are still training in other processes "
                         f"({names}): the last of them writes the report")
            else:
                self.log(f"study {name}: {len(left)} runs unfinished ({names}): run the same "
                         f"`resnets study` command again to finish them")
            return study_dir
        with _report_lock(study_dir):
            write_report(study_dir)
        parts = []
        if self.trained:
            at_once = f", {jobs} at a time" if jobs > 1 else ""
            parts.append(f"{len(self.trained)} trained here in "
                         f"{format_duration(time.monotonic() - self.started)}{at_once}")
        if self.earlier:
            parts.append(f"{len(self.earlier)} finished earlier")
        others = len(self.runs) - len(self.trained) - len(self.earlier)
        if others:
            parts.append(f"{others} by other processes")
        self.log(f"study {name}: {len(self.runs)} runs in {study_dir} ({'; '.join(parts)}); "
                 f"report in {study_dir / 'report'}")
        return study_dir


def _train_here(session: _Session, progress: str) -> None:
    """One run after another, in this process (`fit` shows its own progress)."""
    from resnets.train import TrainingInterrupted

    while (run := session.next_run()) is not None:
        session.looks[run] += 1

        def announce(resume: bool) -> None:
            verb = "resuming" if resume else "training"
            session.log(f"{session.tag(run)} {verb} {run.name} ({session.elapsed()})")

        try:
            outcome = train_run(session.study, session.study_dir, run, progress=progress,
                                announce=announce)
        except TrainingInterrupted as interrupted:
            raise TrainingInterrupted(
                f"study interrupted during {run.name} (run {session.tag(run)[1:-1]}); its "
                f"checkpoint is saved: run the same `resnets study` command again to continue",
                interrupted.signal_number) from None
        session.ended(run, outcome)


def _train_in_workers(session: _Session, jobs: int, cores: int, progress: str) -> None:
    """Up to `jobs` runs at once, each in a worker process (parallel.Workers). A failed run
    stops new ones from starting (the running ones finish) and is raised at the end; Ctrl-C
    or SIGTERM is passed on to the workers, which write their checkpoints and stop."""
    from resnets.study.parallel import StopSignals, Workers, gpu_count, worker_threads

    recipe = session.study.config_for(session.runs[0])  # threads and device: the same for all
    todo = sum(not run_dir.finished() for run_dir in session.directories.values())
    threads = None if recipe.threads is not None else \
        worker_threads(min(jobs, max(1, todo)), cores)
    gpus = gpu_count()
    failed: list = []
    stopped: list = []
    with StopSignals() as stop, \
            Workers(session.study_dir, jobs, progress="none" if progress == "none"
                    else "lines") as workers:
        while True:
            slot = workers.free_slot()
            if slot is not None and not stop.received and not failed \
                    and (run := session.next_run()) is not None:
                _start_worker(session, workers, run, slot, recipe, threads, gpus)
                continue
            if not workers.busy():
                break
            ended = workers.wait(stop)
            if ended is not None:  # else a signal, passed on to the workers
                _worker_ended(session, workers, ended, failed, stopped)
    _raise_for(session, stop.received, stopped, failed)


def _start_worker(session: _Session, workers, run: Run, slot: int, recipe, threads, gpus: int
                  ) -> None:
    """Start `run` in worker `slot`, and say so."""
    from resnets.study.parallel import worker_device

    session.looks[run] += 1
    device = worker_device(recipe.device, slot, gpus)
    verb = "resuming" if session.directories[run].resumable() else "training"
    count = threads or recipe.threads
    how = ", ".join(filter(None, [
        device, f"{count} thread{'s' if count > 1 else ''}" if count else None]))
    session.log(f"{session.tag(run)} {verb} {run.name} (worker {slot + 1}/{workers.jobs}"
                f"{': ' + how if how else ''}; {session.elapsed()})")
    workers.start(run, slot, threads=threads, device=device)


def _worker_ended(session: _Session, workers, ended, failed: list, stopped: list) -> None:
    """Note how a worker's run ended: failed, interrupted or finished."""
    run, outcome, seconds = ended
    if outcome["outcome"] == "failed":
        running = len(workers.running)
        then = f"; the {running} running finish, no new run starts" if running else ""
        session.log(f"{session.tag(run)} {run.name} failed: {outcome['message']} "
                    f"(log: {outcome['log']}){then}")
        failed.append((run, outcome["message"]))
    elif outcome["outcome"] == "interrupted":
        stopped.append(run)
    else:
        session.ended(run, outcome, seconds)


def _raise_for(session: _Session, signals: list, stopped: list, failed: list) -> None:
    """After the workers: TrainingInterrupted for a signal, a UserError for a failed run."""
    import signal

    from resnets.train import TrainingInterrupted

    if signals:
        number = signals[0]
        what = "interrupted" if number == signal.SIGINT else \
            f"stopped by {signal.Signals(number).name}"
        stopped.sort(key=session.runs.index)  # in the study's order, not the order they ended
        runs = f" ({', '.join(run.name for run in stopped)} stopped, each keeping its last " \
               f"checkpoint)" if stopped else ""
        raise TrainingInterrupted(f"study {what}{runs}: run the same `resnets study` command "
                                  f"again to continue", number)
    if failed:
        run, message = failed[0]
        more = f" (and {len(failed) - 1} more runs failed)" if len(failed) > 1 else ""
        raise UserError(f"{run.name} failed: {message}{more}; the other runs are kept: run the "
                        f"same `resnets study` command again once it is fixed")
