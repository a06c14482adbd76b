"""`resnets train --nproc-per-node N`: N training processes on this machine, started through
PyTorch's own elastic launcher (`torch.distributed.launcher.api.elastic_launch`, what torchrun
runs), with the settings checked once before any of them starts.

It owns what a user sees: each process runs `resnets train` with the same settings and a run
directory this process has already named, rank 0 prints the progress and any one-line error,
and a failure or a Ctrl-C ends in one line with the command that continues the run (exit status
2 for the user's mistakes, 130 for Ctrl-C), never torchrun's own traceback. Plain
`torchrun -m resnets train ...` keeps working for clusters (several machines, restarts).
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from dataclasses import dataclass

from resnets.errors import UserError

LAUNCHER_VARIABLE = "RESNETS_LAUNCHER_PROCESSES"  # set for the workers: who started them
INTERRUPTED = 130
USER_ERROR = 2


@dataclass(frozen=True)
class Outcome:
    """How a launched job ended: the exit status for the command, and the line to print
    (None where rank 0 already printed it)."""

    status: int
    line: str | None = None


def check_processes(processes: int, batch_size: int, device: str, sync_bn: bool) -> None:
    """Refuse, before any process starts, settings that cannot work on `processes` processes."""
    import torch

    if processes < 1:
        raise UserError(f"--nproc-per-node must be at least 1, got {processes}")
    if batch_size % processes:
        raise UserError(f"batch_size {batch_size} does not divide among {processes} processes: "
                        f"give a --batch-size that is a multiple of {processes}")
    if device.startswith("cuda:"):
        raise UserError(f"device {device!r}: with --nproc-per-node each process takes the GPU "
                        f"of its local rank; give --device cuda (or auto)")
    on_cuda = device in ("cuda", "auto") and torch.cuda.is_available()
    if on_cuda and processes > torch.cuda.device_count():
        raise UserError(f"--nproc-per-node {processes}: this machine has "
                        f"{torch.cuda.device_count()} GPU(s), one per process")
    if sync_bn and not on_cuda:
        raise UserError("sync_bn needs CUDA: SyncBatchNorm does not run on the CPU (gloo); "
                        "train without --sync-bn")


def resume_command(processes: int, run_dir) -> str:
    """The command that continues a run bit-exactly: on as many processes as it started on."""
    return f"`resnets train --nproc-per-node {processes} --resume {run_dir}`"


def launched_here() -> int | None:
    """The number of processes when this process was started by `launch` (None otherwise)."""
    text = os.environ.get(LAUNCHER_VARIABLE, "")
    return int(text) if text.isdigit() else None


def launch(processes: int, worker_args: list[str], run_dir, threads: int | None) -> Outcome:
    """Run `resnets train WORKER_ARGS` in `processes` processes on this machine and wait."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    _quiet_launcher_logs()
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=processes,
                          run_id=f"resnets-{uuid.uuid4().hex[:12]}", rdzv_backend="c10d",
                          rdzv_endpoint="127.0.0.1:0", max_restarts=0, monitor_interval=0.1,
                          start_method="spawn")
    saved = {key: os.environ.get(key) for key in (LAUNCHER_VARIABLE, "OMP_NUM_THREADS")}
    os.environ[LAUNCHER_VARIABLE] = str(processes)
    os.environ["OMP_NUM_THREADS"] = str(threads or max(1, (os.cpu_count() or 1) // processes))
    try:
        elastic_launch(config, sys.executable)("-m", "resnets", "train", *worker_args)
    except ChildFailedError as failed:
        return _failed(failed, processes, run_dir)
    except (SignalException, KeyboardInterrupt):
        return Outcome(INTERRUPTED)  # rank 0 said where the checkpoint is and how to go on
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return Outcome(0)


def _quiet_launcher_logs() -> None:
    """The launcher's own warnings ("Received 2 death signal, shutting down workers") are
    not the user's business: what happened is our one line. Its loggers set their own levels."""
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.ERROR)


def _failed(failed, processes: int, run_dir) -> Outcome:
    """The outcome of a job one of whose processes failed: rank 0's own line stands for a
    mistake of the user's (status 2) and for Ctrl-C (130); a process that crashed while it
    left a finished run (rank 0 done, summary.json written) loses nothing and is a warning;
    anything else gets one line here."""
    import signal
    from pathlib import Path

    from resnets.rundir import RunDir

    codes = {failure.local_rank: failure.exitcode for failure in failed.failures.values()}
    stopped = {INTERRUPTED, -signal.SIGINT, -signal.SIGTERM}
    # Killed or aborted while closing a finished run: when one process aborts there (gloo,
    # SIGABRT), the launcher stops the others (SIGTERM; rank 0 then exits 130), so all the
    # codes are signals or 130, and the run has its summary.json.
    signalled = all(code < 0 or code == INTERRUPTED for code in codes.values())
    closing = (0 not in codes or signalled) and RunDir(Path(run_dir)).finished()
    if stopped & set(codes.values()) and not closing:
        return Outcome(INTERRUPTED)
    if codes.get(0) == USER_ERROR:
        return Outcome(USER_ERROR)
    if closing:
        rank, code = min(codes.items())
        print(f"warning: training process {rank} of {processes} ended with exit status {code} "
              f"as it closed, after the run had finished; {run_dir} is complete",
              file=sys.stderr)
        return Outcome(0)
    rank, code = min(codes.items())
    return Outcome(1, f"training process {rank} of {processes} failed (exit status {code}); "
                      f"its output is above; once the cause is fixed, continue with "
                      f"{resume_command(processes, run_dir)} (from the last checkpoint, if one "
                      f"was written)")
