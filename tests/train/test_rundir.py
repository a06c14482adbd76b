"""The run directory: one owner per run, nothing of the user's touched, nothing lost on a
full disk or a SIGTERM."""

from __future__ import annotations

import json
import multiprocessing
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from resnets.cli import main
from resnets.errors import UserError
from resnets.rundir import RunDir
from resnets.train import fit, load_checkpoint

from train_fakes import tiny_config

TRAIN_TESTS = Path(__file__).parent

TINY = ["--model", "tiny", "--data", "fake", "--device", "cpu", "--batch-size", "16",
        "--pad", "0", "--progress", "none"]

# A training process on the stand-in parts (tests/train/train_fakes.py), for tests that need
# a second live process or a process-wide limit. ARGS are the `resnets` command's arguments.
FAKE_TRAINING = textwrap.dedent("""
    import os, resource, signal, sys
    sys.path.insert(0, {tests!r})
    import resnets.train.loop as loop
    import resnets.train.setup as setup
    import resnets.train.parts as parts_module
    from resnets.train.parts import Parts
    from train_fakes import FakeLoader, FakeNormalizer, fake_create_model, fake_load_dataset
    import time
    fakes = Parts(fake_create_model, fake_load_dataset, FakeNormalizer.fit,
                  FakeNormalizer.from_state_dict, FakeLoader)
    parts_module.default_parts = lambda: fakes
    real_step, calls = loop.train_step, [0]
    def step(*args, **kwargs):
        calls[0] += 1
        if calls[0] == {limit_after}:  # from here on no file may grow past LIMIT bytes
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
        time.sleep({pause})
        return real_step(*args, **kwargs)
    loop.train_step = step
    setup.machine_busy_warning = lambda: None  # this machine's load is not under test here
    from resnets.cli import main
    sys.exit(main({args!r}))
""")


def _fake_training(args, *, limit_after=-1, limit=0, pause=0.0):
    script = FAKE_TRAINING.format(tests=str(TRAIN_TESTS), args=args, limit_after=limit_after,
                                  limit=limit, pause=pause)
    return [sys.executable, "-c", script]


def test_two_live_processes_never_share_a_run_directory(tmp_path):
    args = ["train", *TINY, "--iters", "400", "--eval-every", "100", "--out", str(tmp_path),
            "--name", "r"]
    first = subprocess.Popen(_fake_training(args, pause=0.02), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "r" / "metrics.jsonl").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, first.stderr.read()
        second = subprocess.run(_fake_training(args), capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert second.stderr.count("\n") == 1 and "in use by another resnets process" in second.stderr
        resume = ["train", "--resume", str(tmp_path / "r"), "--progress", "none"]
        third = subprocess.run(_fake_training(resume), capture_output=True, text=True, timeout=120)
        assert third.returncode == 2 and "in use by another resnets process" in third.stderr
    finally:
        first.kill()
        first.wait()
    # The OS released the dead process's lock: the run resumes from its last checkpoint (or,
    # without one yet, starts again).
    if (tmp_path / "r" / "checkpoints" / "last.pt").exists():
        resumed = subprocess.run(_fake_training(resume), capture_output=True, text=True,
                                 timeout=300)
        assert resumed.returncode == 0, resumed.stderr
        assert (tmp_path / "r" / "summary.json").is_file()


def _claim(parent: str, queue) -> None:
    queue.put(str(RunDir.claim_new(parent, "resnet20-bundled-20261129-120000").path))


def test_runs_started_in_the_same_second_get_their_own_directories(tmp_path):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_claim, args=(str(tmp_path), queue)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    claimed = sorted(queue.get(timeout=10) for _ in workers)
    assert len(set(claimed)) == 4
    assert [Path(p).name for p in claimed] == ["resnet20-bundled-20261129-120000",
                                               *(f"resnet20-bundled-20261129-120000-{n}"
                                                 for n in (2, 3, 4))]


def _create_each(parent: str, count: int, start, queue) -> None:
    refused = []
    for number in range(count):
        start.wait(30)  # both processes at the same folder at the same moment
        try:
            RunDir(Path(parent) / f"run-{number}").create()
        except UserError as error:
            refused.append(str(error))
    queue.put(refused)


def test_processes_creating_one_run_directory_at_once_never_refuse_each_other(tmp_path):
    """A study's shard workers each create a run's folder before claiming its lock: a folder
    one of them is making must never look like someone else's to the other (it did, once in
    a CI rehearsal: no marker yet, the first one's files already in it)."""
    context = multiprocessing.get_context("spawn")
    queue, start = context.Queue(), context.Barrier(2)
    workers = [context.Process(target=_create_each, args=(str(tmp_path), 300, start, queue))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    refused = [queue.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(60)
    assert refused == [[], []], refused[0][:1] + refused[1][:1]
    made = sorted(p.name for p in tmp_path.iterdir())
    assert made == sorted(f"run-{n}" for n in range(300))  # no temporary folder left
    assert all(RunDir(tmp_path / name).ours() for name in made)


def test_default_names_never_collide_in_one_second(tmp_path, fake_rooms, capsys):
    for seed in range(3):
        assert main(["train", *TINY, "--iters", "2", "--seed", str(seed), "--out",
                     str(tmp_path)]) == 0
    runs = sorted(p for p in tmp_path.iterdir())
    assert len(runs) == 3 and all(RunDir(p).finished() for p in runs)
    seeds = {json.loads(RunDir(p).config.read_text())["seed"] for p in runs}
    assert seeds == {0, 1, 2}


def test_a_folder_resnets_did_not_make_is_never_written_into(tmp_path, fake_rooms, capsys):
    theirs = tmp_path / "K"
    theirs.mkdir()
    (theirs / "metrics.jsonl").write_text("my own notes\n")
    (theirs / "config.json").write_text('{"mine": true}\n')
    assert main(["train", *TINY, "--iters", "2", "--out", str(tmp_path), "--name", "K"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "resnets did not make" in err
    assert (theirs / "metrics.jsonl").read_text() == "my own notes\n"
    assert (theirs / "config.json").read_text() == '{"mine": true}\n'
    assert sorted(p.name for p in theirs.iterdir()) == ["config.json", "metrics.jsonl"]


def test_out_or_name_that_is_a_file_is_one_line(tmp_path, fake_rooms, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["train", *TINY, "--iters", "2", "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["train", *TINY, "--iters", "2", "--out", str(tmp_path), "--name", "file"]) == 2
    assert "is a file" in capsys.readouterr().err


def test_a_full_disk_mid_run_keeps_the_last_good_checkpoint(tmp_path):
    # A file-size limit from step 6 on: metrics lines still fit, a checkpoint does not.
    args = ["train", *TINY, "--iters", "12", "--eval-every", "4", "--log-every", "4",
            "--out", str(tmp_path), "--name", "r"]
    result = subprocess.run(_fake_training(args, limit_after=6, limit=4096), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: cannot write ")
    assert "last.pt" in result.stderr or "best.pt" in result.stderr
    assert load_checkpoint(tmp_path / "r")["step"] == 4  # the one written before the limit
    leftovers = [p.name for p in (tmp_path / "r" / "checkpoints").iterdir()]
    assert sorted(leftovers) in (["best.pt", "last.pt"], ["last.pt"])  # no temporary files


def test_sigterm_writes_a_checkpoint_and_the_run_resumes_exactly(tmp_path, fake_rooms,
                                                                  ctrl_c_after_step, capsys):
    args = ["train", *TINY, "--iters", "12", "--eval-every", "4", "--out", str(tmp_path)]
    assert main([*args, "--name", "straight"]) == 0
    ctrl_c_after_step(6, signal.SIGTERM)  # what schedulers, `docker stop` and `kill` send
    assert main([*args, "--name", "stopped"]) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("stopped by SIGTERM at step 6/12")
    assert load_checkpoint(tmp_path / "stopped")["step"] == 6  # not 4: nothing lost
    assert main(["train", "--resume", str(tmp_path / "stopped"), "--progress", "none"]) == 0
    straight = load_checkpoint(tmp_path / "straight")["model_state"]
    resumed = load_checkpoint(tmp_path / "stopped")["model_state"]
    assert all((straight[k] == resumed[k]).all() for k in straight)


def test_a_truncated_last_checkpoint_points_at_best(tmp_path, fake_rooms):
    config = tiny_config(iters=8, eval_every=4)
    fit(config, tmp_path / "r", progress="none")
    run = RunDir(tmp_path / "r")
    run.summary.unlink()
    run.last.write_bytes(run.last.read_bytes()[:100])  # a crash of the disk, not of ours
    with pytest.raises(UserError, match="best.pt may still be good: copy it over"):
        fit(config, run.path, resume=True, progress="none")
