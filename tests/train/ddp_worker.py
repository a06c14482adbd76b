"""One `resnets` process under torchrun, for the distributed tests.

Run as `torchrun ... tests/train/ddp_worker.py train ARGS...`: the arguments are a `resnets`
command line. Environment variables make a process report on itself or misbehave on purpose:

  DDP_TEST_DIR=DIR        rank R saves its final parameters to DIR/params{R}.pt and lists every
                          file it creates or writes in DIR/writes{R}.txt
  DDP_TEST_LOSSES=DIR     rank R writes each step's loss (its own part of the batch) as a line
                          of DIR/losses{R}.txt
  DDP_TEST_KILL=R:STEP    rank R kills itself (SIGKILL) after optimizer step STEP, on the
                          group's first attempt only (what a crashed machine does)
  DDP_TEST_HANG=R:STEP:S  rank R stops answering for S seconds after step STEP
  DDP_TEST_REFERENCE=K    (one process, no torchrun) each step runs the batch as K separate
                          slices through BatchNorm: the one-process twin of K processes
"""

import builtins
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import resnets.train.loop as loop
import resnets.train.setup as setup
from resnets.cli import main

RANK = int(os.environ.get("RANK", "0"))
ATTEMPT = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
REPORT = os.environ.get("DDP_TEST_DIR")
LOSSES = os.environ.get("DDP_TEST_LOSSES")


def _log_writes(folder: Path) -> None:
    """Record every path this process opens for writing (builtins.open and os.open)."""
    log = open(folder / f"writes{RANK}.txt", "a")
    real_open, real_os_open = builtins.open, os.open

    def note(path) -> None:
        log.write(f"{os.fspath(path)}\n")
        log.flush()

    def logging_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+"):
            note(file)
        return real_open(file, mode, *args, **kwargs)

    def logging_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            note(path)
        return real_os_open(path, flags, *args, **kwargs)

    builtins.open, os.open = logging_open, logging_os_open


def _misbehave() -> None:
    kill = os.environ.get("DDP_TEST_KILL")
    hang = os.environ.get("DDP_TEST_HANG")
    slices = int(os.environ.get("DDP_TEST_REFERENCE", "0"))
    real_step, steps = loop.train_step, [0]

    def step(model, optimizer, images, labels, *, precision="fp32", **options):
        if slices:
            out = _sliced_step(model, optimizer, images, labels, slices,
                               options.get("label_smoothing", 0.0))
        else:
            out = real_step(model, optimizer, images, labels, precision=precision, **options)
        steps[0] += 1
        if LOSSES:
            with open(Path(LOSSES) / f"losses{RANK}.txt", "a") as losses:
                losses.write(f"{float(out[0])!r}\n")
        if kill and ATTEMPT == 0 and [RANK, steps[0]] == [int(v) for v in kill.split(":")]:
            os.kill(os.getpid(), signal.SIGKILL)
        if hang:
            rank, at, seconds = hang.split(":")
            if (RANK, steps[0]) == (int(rank), int(at)):
                time.sleep(float(seconds))
        return out

    loop.train_step = step


def _sliced_step(model, optimizer, images, labels, slices, label_smoothing=0.0):
    """What `slices` DDP processes compute together, in one process: each slice goes through
    the model (and its BatchNorm) alone; the gradient is the mean of the slices' gradients."""
    losses = [F.cross_entropy(model(part).float(), part_labels, label_smoothing=label_smoothing)
              for part, part_labels in zip(images.chunk(slices), labels.chunk(slices))]
    loss = torch.stack(losses).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), torch.zeros((), dtype=torch.long)


def _save_parameters(folder: Path) -> None:
    real_finish = loop._Training.finish

    def finish(self, display):
        parameters = {k: v.detach().clone() for k, v in self.state.model.named_parameters()}
        torch.save(parameters, folder / f"params{RANK}.pt")
        return real_finish(self, display)

    loop._Training.finish = finish


if __name__ == "__main__":
    if REPORT:
        _save_parameters(Path(REPORT))
        _log_writes(Path(REPORT))
    _misbehave()
    setup.machine_busy_warning = lambda: None  # the machine's load is not under test here
    sys.exit(main(sys.argv[1:]))
