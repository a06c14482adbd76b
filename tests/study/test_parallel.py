"""`resnets study --jobs N` and `--shard I/N`: every run trained exactly once, however many
processes share the study, a killed worker's run taken up again, and the same report.

How "exactly once" is counted: every process that claims a run (its run directory's lock)
writes one line to `logs/RUN.log` before it calls `fit`, "training RUN ..." for a fresh start
or "resuming RUN ..." for a resumed one, so the lines are the `fit` calls, whoever made them.
The metrics confirm it: each run's training steps are logged once each, in order, to the last.
"""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import resnets
from resnets.cli import main
from resnets.errors import UserError
from resnets.rundir import RunDir
from resnets.study.degradation import Study, run_study
from resnets.study.parallel import (Shard, default_jobs, parse_shard, shard_order,
                                    worker_device, worker_threads)

SRC = str(Path(resnets.__file__).resolve().parents[1])
ENV = {**os.environ, "PYTHONPATH": SRC}  # subprocesses run this checkout's resnets
# Tiny runs, one thread each, evaluated (and checkpointed) at the end only unless a test needs
# a checkpoint to stop at: an evaluation of the 1,000 test digits costs more than the 8 steps.
TRAIN = {"data": "bundled", "iters": 8, "batch_size": 16, "log_every": 2, "eval_every": 8,
         "eval_batch_size": 500, "precision": "fp32", "threads": 1}
KINDS = ["plain", "resnet", "preact_resnet"]  # three runs: two workers, one takes two


def tiny_study(name="par", iters=8, eval_every=8, kinds=KINDS):
    return Study(name=name, kinds=list(kinds), depths=[8], seeds=[0], preset="quick",
                 train={**TRAIN, "iters": iters, "eval_every": eval_every}).validate()


def study_command(study_file, out, *flags):
    return [sys.executable, "-m", "resnets", "study", "--config", str(study_file), "--out",
            str(out), "--progress", "none", *flags]


def write_study(tmp_path, study):
    path = tmp_path / f"{study.name}.toml"
    path.write_text(study.to_toml())
    return path


def starts(study_dir, study):
    """{run name: (fresh starts, resumptions)} from the runs' logs."""
    counts = {}
    for run in study.runs():
        log = study_dir / "logs" / f"{run.name}.log"
        text = log.read_text() if log.exists() else ""
        counts[run.name] = (len(re.findall(rf"UTC training {run.name} ", text)),
                            len(re.findall(rf"UTC resuming {run.name} ", text)))
    return counts


def check_trained_once(study_dir, study, iters):
    """Every run finished, its steps logged once each up to the last, the report written."""
    for run in study.runs():
        run_dir = study_dir / "runs" / run.name
        assert (run_dir / "summary.json").is_file(), run.name
        records = [json.loads(line)
                   for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        steps = [r["step"] for r in records if r["split"] == "train"]
        assert steps == sorted(set(steps)) and steps[-1] == iters, (run.name, steps)
    assert (study_dir / "report" / "table.md").is_file()


def wait_for(condition, seconds=180, process=None):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        if process is not None:
            assert process.poll() is None, "the process ended before the condition held"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    """The tiny study trained the plain way, one run after another in this process."""
    root = tmp_path_factory.mktemp("sequential")
    run_study(tiny_study(), root, progress="none", log=lambda line: None, jobs=1)
    return root / "par"


def same_report(study_dir, sequential):
    """The report's numbers (summary.json's rows, unrounded) and table are those of the study
    trained one run after another."""
    def rows(folder):
        return json.loads((folder / "report" / "summary.json").read_text())["rows"]

    assert rows(study_dir) == rows(sequential)
    table = (sequential / "report" / "table.md").read_text()
    assert (study_dir / "report" / "table.md").read_text() == table
    return table


# ------------------------------------------------------------------ the small parts


def test_shard_is_worker_i_of_n_counted_from_1():
    assert parse_shard("1/2") == Shard(1, 2) and parse_shard(" 2 / 2 ") == Shard(2, 2)
    assert parse_shard(None) is None
    for bad in ("0/2", "3/2", "1/0", "2", "a/b", "-1/2", "1/2/3", ""):
        with pytest.raises(UserError, match="shard must be I/N"):
            parse_shard(bad)


def test_a_shard_takes_its_own_runs_first_then_the_others():
    runs = list("abcde")
    assert shard_order(runs, None) == runs
    assert shard_order(runs, Shard(1, 2)) == ["a", "c", "e", "b", "d"]
    assert shard_order(runs, Shard(2, 2)) == ["b", "d", "a", "c", "e"]
    assert shard_order(runs, Shard(3, 3)) == ["c", "a", "b", "d", "e"]


def test_workers_share_the_cores_and_go_round_robin_over_several_gpus():
    assert worker_threads(2, 2) == 1 and worker_threads(3, 2) == 1 and worker_threads(2, 16) == 8
    assert [worker_device("auto", slot, 2) for slot in range(3)] == ["cuda:0", "cuda:1", "cuda:0"]
    assert worker_device("cuda", 2, 3) == "cuda:2"
    assert worker_device("auto", 1, 1) is None and worker_device("auto", 1, 0) is None
    assert worker_device("cpu", 1, 4) is None and worker_device("cuda:1", 0, 4) is None


def test_the_default_is_one_run_at_a_time_until_measured():
    assert default_jobs(cores=2, gpus=0) == 1


def test_run_study_refuses_bad_jobs_and_shards_in_one_line(tmp_path):
    with pytest.raises(UserError, match="jobs must be a whole number >= 1"):
        run_study(tiny_study(), tmp_path, jobs=0)
    with pytest.raises(UserError, match="shard must be I/N"):
        run_study(tiny_study(), tmp_path, shard="2/1")


def test_a_study_under_torchrun_is_refused_before_it_starts(tmp_path, monkeypatch,
                                                            one_error_line):
    # Under `torchrun --nproc-per-node 2 -m resnets study` one rank took the run and waited
    # for a partner that had skipped it (a user's report): the variables torchrun sets.
    for key, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0",
                       "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    assert main(["study", "--depths", "8", "--seeds", "0", "--iters", "2", "--out",
                 str(tmp_path)]) == 2
    assert "a study does not run under torchrun" in one_error_line()
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ the run directory lock

HOLD = textwrap.dedent("""
    import fcntl, sys
    handle = open(sys.argv[1], "a")
    fcntl.flock(handle, fcntl.LOCK_EX)
    print("held", flush=True)
    sys.stdin.read()
""")


def hold_lock(run_dir):
    """A live process holding `run_dir`'s lock until its stdin is closed."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir.path / ".lock")],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "held\n"
    return process


def test_try_lock_skips_a_run_another_process_holds(tmp_path):
    run_dir = RunDir(tmp_path / "r").create()
    holder = hold_lock(run_dir)
    try:
        assert run_dir.held_elsewhere()
        with run_dir.try_lock() as mine:
            assert not mine
        with pytest.raises(UserError, match="in use by another resnets process"):
            with run_dir.lock():
                pass
    finally:
        holder.stdin.close()
        holder.wait()
    assert not run_dir.held_elsewhere()  # released when its holder ended


def test_try_lock_is_reentrant_in_one_thread_only(tmp_path):
    run_dir = RunDir(tmp_path / "r").create()
    seen = []
    with run_dir.try_lock() as mine:
        assert mine
        with run_dir.lock():  # a study claims the run, then fit locks it again
            pass
        thread = threading.Thread(target=lambda: seen.append(run_dir.held_elsewhere()))
        thread.start()
        thread.join()
    assert seen == [True]  # another thread is another trainer
    assert not run_dir.held_elsewhere()


def test_a_run_another_process_holds_is_left_to_it_and_no_report_is_written(tmp_path):
    study = tiny_study(name="held", kinds=["plain", "resnet"])
    held = RunDir(tmp_path / "held" / "runs" / "plain8-seed0").create()
    holder = hold_lock(held)
    lines = []
    try:
        run_study(study, tmp_path, progress="none", log=lines.append)
    finally:
        holder.stdin.close()
        holder.wait()
    assert "[1/2] plain8-seed0: another process is training it, skipped" in lines
    assert "still training in other processes (plain8-seed0)" in lines[-1]
    assert not (tmp_path / "held" / "report").exists()
    assert not held.finished() and (tmp_path / "held" / "runs" / "resnet8-seed0" /
                                     "summary.json").is_file()
    # Its holder gone (finished, or crashed), the next worker to come by trains it.
    lines.clear()
    run_study(study, tmp_path, progress="none", log=lines.append)
    assert "[2/2] resnet8-seed0: finished earlier, skipped" in lines
    assert starts(tmp_path / "held", study) == {"plain8-seed0": (1, 0), "resnet8-seed0": (1, 0)}
    check_trained_once(tmp_path / "held", study, 8)


# ------------------------------------------------------------------ whole studies


def test_jobs_2_trains_every_run_once_and_reports_what_one_at_a_time_does(
        tmp_path, sequential, capsys):
    study = tiny_study()
    argv = ["study", "--config", str(write_study(tmp_path, study)), "--out", str(tmp_path),
            "--progress", "none", "--jobs", "2"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    study_dir = tmp_path / "par"
    assert starts(study_dir, study) == {run.name: (1, 0) for run in study.runs()}
    check_trained_once(study_dir, study, 8)
    assert out == same_report(study_dir, sequential)  # whichever way the runs were made
    assert "[1/3] training plain8-seed0 (worker 1/2" in err
    assert "[2/3] training resnet8-seed0 (worker 2/2" in err
    assert re.search(r"\[1/3\] plain8-seed0 finished in \d+:\d\d: test error", err)
    assert "3 runs in" in err.splitlines()[-1] and "3 trained here" in err.splitlines()[-1]
    # run again: nothing to do, the same report
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert out == same_report(study_dir, sequential)
    assert err.count("finished earlier, skipped") == 3
    assert starts(study_dir, study) == {run.name: (1, 0) for run in study.runs()}


def test_two_shard_workers_on_one_folder_train_every_run_once(tmp_path, sequential):
    study = tiny_study()
    study_file = write_study(tmp_path, study)
    workers = [subprocess.Popen(study_command(study_file, tmp_path, "--shard", shard),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=ENV) for shard in ("1/2", "2/2")]
    results = [worker.communicate(timeout=300) for worker in workers]
    for worker, (out, err) in zip(workers, results):
        assert worker.returncode == 0, err
    study_dir = tmp_path / "par"
    assert starts(study_dir, study) == {run.name: (1, 0) for run in study.runs()}
    check_trained_once(study_dir, study, 8)
    # The worker that saw the last run finish printed the table (both, if they both did).
    table = same_report(study_dir, sequential)
    tables = [out for out, _ in results if out]
    assert tables and all(out == table for out in tables)


def test_a_killed_shard_worker_rerun_finishes_the_study(tmp_path):
    study = tiny_study(name="killed", iters=24, eval_every=8, kinds=["plain", "resnet"])
    study_file = write_study(tmp_path, study)
    study_dir = tmp_path / "killed"
    first = subprocess.Popen(study_command(study_file, tmp_path, "--shard", "1/2"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    own = study_dir / "runs" / "plain8-seed0"  # worker 1's run
    log = study_dir / "logs" / "plain8-seed0.log"
    wait_for(lambda: log.exists() and f"process {first.pid} " in log.read_text(), process=first)
    other = subprocess.Popen(study_command(study_file, tmp_path, "--shard", "2/2"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    wait_for(lambda: (own / "checkpoints" / "last.pt").exists(), process=first)
    assert not (own / "summary.json").exists(), "the run ended before it could be killed"
    first.send_signal(signal.SIGKILL)
    first.wait()
    # The other worker finishes its own run and, the lock being free, maybe the killed one.
    other_out, other_err = other.communicate(timeout=300)
    assert other.returncode == 0, other_err

    rerun = subprocess.run(study_command(study_file, tmp_path, "--shard", "1/2"),
                           capture_output=True, text=True, timeout=300, env=ENV)
    assert rerun.returncode == 0, rerun.stderr
    assert starts(study_dir, study) == {"plain8-seed0": (1, 1), "resnet8-seed0": (1, 0)}
    check_trained_once(study_dir, study, 24)
    assert rerun.stdout == (study_dir / "report" / "table.md").read_text()


def test_ctrl_c_stops_every_worker_with_one_checkpoint(tmp_path):
    study = tiny_study(name="stopped", iters=400, eval_every=4, kinds=["plain", "resnet"])
    study_dir = tmp_path / "stopped"
    process = subprocess.Popen(study_command(write_study(tmp_path, study), tmp_path, "--jobs",
                                             "2"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    run_dirs = [RunDir(study_dir / "runs" / run.name) for run in study.runs()]
    wait_for(lambda: all(run_dir.last.exists() for run_dir in run_dirs), process=process)
    process.send_signal(signal.SIGINT)  # as Ctrl-C: the workers, in sessions of their own, get
    out, err = process.communicate(timeout=120)  # it from the study process alone
    assert process.returncode == 130, err
    assert out == ""
    assert err.splitlines()[-1] == ("study interrupted (plain8-seed0, resnet8-seed0 stopped, "
                                    "each keeping its last checkpoint): run the same `resnets "
                                    "study` command again to continue")
    for run_dir in run_dirs:
        log = (study_dir / "logs" / f"{run_dir.path.name}.log").read_text()
        assert log.count(" stopped: interrupted at step ") == 1, log  # one checkpoint each
        assert not run_dir.held_elsewhere() and not run_dir.finished()
    assert starts(study_dir, study) == {"plain8-seed0": (1, 0), "resnet8-seed0": (1, 0)}


def test_workers_stop_when_the_study_process_is_killed(tmp_path):
    study = tiny_study(name="orphans", iters=400, eval_every=4, kinds=["plain", "resnet"])
    study_dir = tmp_path / "orphans"
    process = subprocess.Popen(study_command(write_study(tmp_path, study), tmp_path, "--jobs",
                                             "2"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    run_dirs = [RunDir(study_dir / "runs" / run.name) for run in study.runs()]
    wait_for(lambda: all(run_dir.last.exists() for run_dir in run_dirs), process=process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    # Each worker sees its study process gone, writes a checkpoint, stops and frees its run.
    wait_for(lambda: not any(run_dir.held_elsewhere() for run_dir in run_dirs), seconds=60)
    for run_dir in run_dirs:
        log = (study_dir / "logs" / f"{run_dir.path.name}.log").read_text()
        assert log.count(" stopped: interrupted at step ") == 1, log
        assert not run_dir.finished()


def test_a_run_failing_in_a_worker_is_one_line_and_no_new_run_starts(tmp_path, capsys):
    argv = ["study", "--name", "failing", "--kinds", "plain", "resnet", "preact_resnet",
            "--depths", "8", "--seeds", "0", "--iters", "2", "--data", "cifar10",
            "--data-dir", str(tmp_path / "no-cifar"), "--out", str(tmp_path), "--progress",
            "none", "--jobs", "2"]
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    failures = [line for line in err if " failed: " in line and line.startswith("[")]
    assert len(failures) == 2 and all("(log: " in line for line in failures)  # two at once
    assert not any("preact_resnet8-seed0" in line for line in err[:-1])  # the third never began
    assert err[-1].startswith("error: ") and "the other runs are kept" in err[-1]
