"""`resnets train --nproc-per-node N`: real gloo processes on this CPU, started through PyTorch's
elastic launcher by the command itself; what the user sees is one run directory, and one line
when something goes wrong."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from resnets.train import load_checkpoint
from resnets.train.launch import check_processes, resume_command
from resnets.errors import UserError

SRC = Path(__file__).resolve().parents[2] / "src"
# resnet8 on 32 bundled digits a step: a real model and dataset, a few seconds a run
# fp32 forced: precision auto would time this machine in the child processes
TRAIN = ["train", "--model", "resnet8", "--data", "bundled", "--batch-size", "32",
         "--threads", "1", "--progress", "lines", "--precision", "fp32"]


def _environment() -> dict:
    return {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def _resnets(*args: str, cwd: Path, wait: bool = True):
    command = [sys.executable, "-m", "resnets", *args]
    if not wait:
        return subprocess.Popen(command, cwd=cwd, env=_environment(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
    return subprocess.run(command, cwd=cwd, env=_environment(), capture_output=True, text=True,
                          timeout=300)


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def test_two_processes_train_one_run_directory(tmp_path):
    done = _resnets(*TRAIN, "--nproc-per-node", "2", "--iters", "6", "--eval-every", "3",
                    cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = (tmp_path / "runs").iterdir()  # one run directory, named once for both processes
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 6
    config = json.loads((run / "config.json").read_text())
    assert config["environment"]["processes"] == 2
    assert "Traceback" not in done.stdout + done.stderr


def test_settings_that_cannot_work_are_refused_before_any_process_starts(tmp_path):
    started = time.monotonic()
    done = _resnets(*TRAIN, "--nproc-per-node", "3", "--iters", "6", cwd=tmp_path)
    assert done.returncode == 2
    assert _error_lines(done.stderr) == [
        "error: batch_size 32 does not divide among 3 processes: give a --batch-size that is a "
        "multiple of 3"]
    assert done.stdout == "" and "Traceback" not in done.stderr
    assert not (tmp_path / "runs").exists()  # nothing named, nothing written
    assert time.monotonic() - started < 120  # no worker trained (a run would take minutes here)


def test_check_processes_names_each_impossible_setting():
    check_processes(2, 32, "cpu", sync_bn=False)
    with pytest.raises(UserError, match="does not divide among 3"):
        check_processes(3, 32, "cpu", sync_bn=False)
    with pytest.raises(UserError, match="each process takes the GPU of its local rank"):
        check_processes(2, 32, "cuda:1", sync_bn=False)
    with pytest.raises(UserError, match="sync_bn needs CUDA"):
        check_processes(2, 32, "cpu", sync_bn=True)


def test_ctrl_c_stops_both_processes_with_one_line_and_the_run_resumes(tmp_path):
    launcher = _resnets(*TRAIN, "--nproc-per-node", "2", "--iters", "80", "--eval-every", "80",
                        "--log-every", "1", "--name", "stopped", cwd=tmp_path, wait=False)
    try:
        deadline = time.monotonic() + 180
        metrics = tmp_path / "runs" / "stopped" / "metrics.jsonl"
        while not (metrics.exists() and metrics.read_text().strip()):  # a step was trained
            assert launcher.poll() is None and time.monotonic() < deadline, launcher.stdout.read()
            time.sleep(0.05)
        os.killpg(launcher.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        output, _ = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    assert launcher.returncode == 130, output[-3000:]
    run = tmp_path / "runs" / "stopped"
    stopped_at = load_checkpoint(run)["step"]
    assert 0 < stopped_at < 80
    lines = [line for line in output.splitlines() if "interrupted at step" in line]
    assert lines == [f"interrupted at step {stopped_at}/80; checkpoint written to "
                     f"{Path('runs') / 'stopped' / 'checkpoints' / 'last.pt'}; continue with "
                     f"{resume_command(2, Path('runs') / 'stopped')}"]
    assert "Traceback" not in output and "death signal" not in output

    resumed = _resnets("train", "--nproc-per-node", "2", "--resume", "runs/stopped",
                       "--progress", "none", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run / "summary.json").read_text())["steps"] == 80
    assert not _error_lines(resumed.stderr) and "no longer bit-exact" not in resumed.stderr


def test_under_plain_torchrun_only_rank_0_prints_a_users_error(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "3", "-m", "resnets", *TRAIN, "--iters", "6"]
    done = subprocess.run(command, cwd=tmp_path, env={**_environment(), "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert len([line for line in (done.stdout + done.stderr).splitlines()
                if "does not divide among 3 processes" in line and "error:" in line]) == 1


def test_how_a_job_whose_process_failed_ends(tmp_path, capsys):
    """The launcher's verdict from the processes' exit statuses (torch's ChildFailedError):
    Ctrl-C is 130, a user's mistake 2 (rank 0 said it), a crash while closing a finished run
    a warning (nothing is lost), any other failure one line with the command to continue."""
    from types import SimpleNamespace

    from resnets.rundir import RunDir
    from resnets.train.launch import _failed

    def job(**codes):
        return SimpleNamespace(failures={i: SimpleNamespace(local_rank=int(r[4:]), exitcode=c)
                                         for i, (r, c) in enumerate(codes.items())})

    run = RunDir(tmp_path / "run").create()
    assert _failed(job(rank1=130), 2, run.path).status == 130
    assert _failed(job(rank0=-2, rank1=-2), 2, run.path).status == 130
    assert _failed(job(rank0=2, rank1=2), 2, run.path).status == 2
    crashed = _failed(job(rank1=-6), 2, run.path)  # the run is not finished: one line
    assert crashed.status == 1 and "process 1 of 2 failed (exit status -6)" in crashed.line
    assert resume_command(2, run.path) in crashed.line
    run.summary.write_text("{}")
    assert _failed(job(rank1=-6), 2, run.path).status == 0  # finished: a warning
    assert "after the run had finished" in capsys.readouterr().err
    # one process aborted as it closed and the launcher stopped the other (seen in CI)
    assert _failed(job(rank0=130, rank1=-6), 2, run.path).status == 0
    assert _failed(job(rank0=-15, rank1=-6), 2, run.path).status == 0
    assert "after the run had finished" in capsys.readouterr().err
    assert _failed(job(rank0=1), 2, run.path).status == 1  # rank 0 itself failed
