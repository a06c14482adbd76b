"""A study's worker process: trains one run (`python -m resnets.study.worker STUDY_DIR RUN`)
for `resnets study --jobs N`, whose `parallel.Workers` starts, watches and stops it."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import warnings
from pathlib import Path

from resnets.errors import UserError, one_line_warnings
from resnets.study.degradation import train_run
from resnets.study.spec import read_study
from resnets.train import TrainingInterrupted
from resnets.train.device import keep_freed_memory


def _stop_when_parent_ends() -> None:
    """The study process holds this worker's stdin open; end of file means it is gone: stop as
    on Ctrl-C (a checkpoint, the lock released) rather than train on with nobody watching."""
    try:
        while os.read(0, 1 << 16):  # the file descriptor, not sys.stdin: no lock held at exit
            pass
    except OSError:
        pass
    os.kill(os.getpid(), signal.SIGINT)


def worker_main(argv: list[str] | None = None) -> int:
    """Train one run of a study (`python -m resnets.study.worker STUDY_DIR RUN`); everything
    it prints goes to stderr (the run's log), and one JSON line, the outcome, to stdout."""
    parser = argparse.ArgumentParser(prog="python -m resnets.study.worker")
    parser.add_argument("study_dir")
    parser.add_argument("run")
    parser.add_argument("--progress", default="lines")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--device")
    args = parser.parse_args(argv)
    keep_freed_memory()  # as `resnets study` itself would for a run it trains

    result = os.dup(1)  # the outcome's way out; everything else printed goes to the log
    os.dup2(2, 1)
    threading.Thread(target=_stop_when_parent_ends, daemon=True).start()
    warnings.showwarning = one_line_warnings(warnings.showwarning)
    try:
        study = read_study(Path(args.study_dir) / "study.toml")
        runs = {run.name: run for run in study.runs()}
        if args.run not in runs:
            raise UserError(f"{args.run} is not a run of the study in {args.study_dir}")
        outcome = train_run(study, args.study_dir, runs[args.run], progress=args.progress,
                            threads=args.threads, device=args.device)
    except TrainingInterrupted as interrupted:
        outcome = {"outcome": "interrupted", "message": str(interrupted)}
    except KeyboardInterrupt:  # before the training loop, where a checkpoint would be written
        outcome = {"outcome": "interrupted", "message": "stopped before training began"}
    except UserError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        outcome = {"outcome": "failed", "message": str(error)}
    sys.stdout.flush()
    os.write(result, (json.dumps(outcome) + "\n").encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(worker_main())
