"""Data parallelism under torchrun, for real: gloo processes on this CPU.

Each torchrun test starts real processes (tests/train/ddp_worker.py runs the `resnets` command
in each, and can save its parameters, list the files it writes, die or hang on purpose).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from resnets.cli import main
from resnets.data import Loader
from resnets.errors import UserError
from resnets.train import fit, load_checkpoint
from resnets.train.distributed import (World, _attempt_store, rank_device,
                                       world_from_environment)
from resnets.train.runs import new_run_dir

from train_fakes import make_dataset, tiny_config

WORKER = Path(__file__).with_name("ddp_worker.py")
SRC = Path(__file__).resolve().parents[2] / "src"
# resnet8 on 32 bundled digits a step: a real model and dataset, a few seconds a run
# fp32 forced: "auto" would time this machine in each process (resnets.train.probe), and the
# runs compared here must compute in the same arithmetic whatever those timings say
RUN = ["train", "--model", "resnet8", "--data", "bundled", "--batch-size", "32", "--iters", "12",
       "--eval-every", "6", "--threads", "1", "--progress", "none", "--precision", "fp32"]


def _environment(report: Path | None = None, **extra: str) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1", **extra}
    if report is not None:
        report.mkdir(parents=True, exist_ok=True)
        env["DDP_TEST_DIR"] = str(report)
    return env


def _torchrun(*options: str, script_args: list[str], env: dict, timeout: float = 300,
              wait: bool = True):
    command = [sys.executable, "-m", "torch.distributed.run", *options, str(WORKER), *script_args]
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def _one_process(script_args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(WORKER), *script_args], env=env,
                          capture_output=True, text=True, timeout=300)


def _our_lines(output: str) -> str:
    """What resnets printed, without torchrun's own warnings."""
    return "\n".join(line for line in output.splitlines() if not line.startswith(("W1", "E1", "I1")))


def _parameters(report: Path, rank: int = 0) -> dict:
    return torch.load(report / f"params{rank}.pt", weights_only=True)


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """An uninterrupted 2-process run: (its report folder, its out folder)."""
    root = tmp_path_factory.mktemp("ddp")
    result = _torchrun("--standalone", "--nproc-per-node", "2",
                       script_args=[*RUN, "--out", str(root), "--name", "straight"],
                       env=_environment(root / "report"))
    assert result.returncode == 0, _our_lines(result.stdout + result.stderr)
    return root / "report", root


def test_two_processes_train_exactly_as_one_process_with_per_rank_batchnorm(two_process_run,
                                                                            tmp_path):
    report, _ = two_process_run
    rank0, rank1 = _parameters(report, 0), _parameters(report, 1)
    assert _max_difference(rank0, rank1) == 0.0  # DDP keeps the ranks identical
    # One process, each batch's halves through BatchNorm separately: the same arithmetic.
    single = _one_process([*RUN, "--out", str(tmp_path), "--name", "single"],
                          _environment(tmp_path / "report-single", DDP_TEST_REFERENCE="2"))
    assert single.returncode == 0, single.stderr
    assert _max_difference(rank0, _parameters(tmp_path / "report-single")) < 1e-5
    # ... and not what one process with whole-batch statistics computes
    whole = _one_process([*RUN, "--out", str(tmp_path), "--name", "whole"],
                         _environment(tmp_path / "report-whole"))
    assert whole.returncode == 0, whole.stderr
    assert _max_difference(rank0, _parameters(tmp_path / "report-whole")) > 1e-3


def test_only_rank_0_writes_files(two_process_run):
    report, out = two_process_run
    written = {rank: [line for line in (report / f"writes{rank}.txt").read_text().splitlines()
                      if line.startswith(str(out))] for rank in (0, 1)}
    assert written[1] == []
    assert any(line.startswith(str(out / "straight" / "checkpoints")) for line in written[0])
    run = out / "straight"
    assert json.loads((run / "config.json").read_text())["environment"]["processes"] == 2
    assert load_checkpoint(run)["world_size"] == 2


def test_a_killed_rank_under_max_restarts_continues_from_its_checkpoint(two_process_run,
                                                                         tmp_path):
    report, _ = two_process_run
    result = _torchrun("--nproc-per-node", "2", "--max-restarts", "1", "--rdzv-backend", "c10d",
                       "--rdzv-endpoint", f"127.0.0.1:{_free_port()}",
                       script_args=[*RUN, "--checkpoint-every", "4", "--out", str(tmp_path),
                                    "--name", "killed", "--eval-test", "every"],
                       env=_environment(tmp_path / "report", DDP_TEST_KILL="1:7"))
    assert result.returncode == 0, _our_lines(result.stdout + result.stderr)
    records = [json.loads(line) for line in (tmp_path / "killed" / "metrics.jsonl").open()]
    assert [r["step"] for r in records if r["split"] == "test"] == [6, 12]  # each once
    assert _max_difference(_parameters(report), _parameters(tmp_path / "report")) == 0.0


def test_a_hung_rank_ends_the_job_with_one_line_and_a_loadable_checkpoint(tmp_path):
    started = time.monotonic()
    result = _torchrun("--standalone", "--nproc-per-node", "2",
                       script_args=[*RUN, "--eval-every", "4", "--dist-timeout", "3", "--out",
                                    str(tmp_path), "--name", "hung"],
                       env=_environment(tmp_path / "report", DDP_TEST_HANG="1:5:15"))
    assert result.returncode != 0
    assert time.monotonic() - started < 120  # ended, not held forever
    errors = [line for line in _our_lines(result.stdout + result.stderr).splitlines()
              if line.startswith("error: rank 0")]
    assert len(errors) == 1 and "did not answer in time" in errors[0], result.stderr[-3000:]
    assert "last.pt (step 4)" in errors[0] and "--resume" in errors[0]
    assert load_checkpoint(tmp_path / "hung")["step"] == 4


def test_ctrl_c_on_the_launcher_stops_every_rank_with_one_checkpoint(tmp_path):
    report = tmp_path / "report"
    launcher = _torchrun("--standalone", "--nproc-per-node", "2",
                         script_args=[*RUN, "--iters", "5000", "--eval-every", "5000", "--out",
                                      str(tmp_path), "--name", "stopped"],
                         env=_environment(report), wait=False)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "stopped" / "metrics.jsonl").exists():
            assert launcher.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(1.0)
        os.killpg(launcher.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        output, _ = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    assert _our_lines(output).count("interrupted at step") == 1, output[-3000:]
    # It says how to continue bit-exactly: on as many processes (a user followed the plain
    # `resnets train --resume` it used to say and got a 1-process run).
    assert (f"continue with `torchrun --nproc-per-node 2 -m resnets train --resume "
            f"{tmp_path / 'stopped'}`") in output
    checkpoint_writes = [line for line in (report / "writes0.txt").read_text().splitlines()
                         if "last.pt" in line]
    assert len(checkpoint_writes) == 1
    assert "last.pt" not in (report / "writes1.txt").read_text()
    assert 0 < load_checkpoint(tmp_path / "stopped")["step"] < 5000


def test_a_run_resumes_on_another_number_of_processes_and_says_so(tmp_path):
    # The job dies at step 6 (no restarts allowed); the last checkpoint is step 4.
    died = _torchrun("--standalone", "--nproc-per-node", "2",
                     script_args=[*RUN, "--eval-every", "4", "--out", str(tmp_path), "--name",
                                  "r"],
                     env=_environment(tmp_path / "report", DDP_TEST_KILL="1:6"))
    assert died.returncode != 0
    assert load_checkpoint(tmp_path / "r")["step"] == 4
    resumed = subprocess.run([sys.executable, "-m", "resnets", "train", "--resume",
                              str(tmp_path / "r"), "--progress", "lines"], env=_environment(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "started on 2 processes and continues on 1" in resumed.stdout + resumed.stderr
    assert "no longer bit-exact" in resumed.stdout + resumed.stderr
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["steps"] == 12


def _losses(report: Path, rank: int) -> list[float]:
    return [float(line) for line in (report / f"losses{rank}.txt").read_text().splitlines()]


@pytest.mark.parametrize("before, after", [(2, 1), (1, 2)])
def test_the_first_loss_after_resuming_on_another_number_of_processes_is_the_steps_mean(
        tmp_path, before, after):
    """A checkpoint taken between two training lines holds the loss of the steps since the
    last line; resumed on another number of processes, the next line's loss is still the mean
    of the steps' global losses (each the mean of the processes' equal parts)."""
    run = [*RUN, "--eval-every", "12", "--log-every", "3", "--checkpoint-every", "4",
           "--out", str(tmp_path), "--name", "r"]
    first, second = tmp_path / "first", tmp_path / "second"

    def launch(processes: int, args: list[str], report: Path, **extra: str):
        report.mkdir(parents=True, exist_ok=True)
        env = _environment(DDP_TEST_LOSSES=str(report), **extra)
        if processes == 1:
            return _one_process(args, env)
        return _torchrun("--standalone", "--nproc-per-node", str(processes), script_args=args,
                         env=env)

    died = launch(before, run, first, DDP_TEST_KILL=f"{before - 1}:6")  # dies after step 6
    assert died.returncode != 0
    assert load_checkpoint(tmp_path / "r")["step"] == 4  # step 4's loss is in its meter
    resumed = launch(after, ["train", "--resume", str(tmp_path / "r"), "--progress", "none"],
                     second)
    assert resumed.returncode == 0, _our_lines(resumed.stdout + resumed.stderr)

    def step_loss(report: Path, processes: int, index: int) -> float:
        return sum(_losses(report, rank)[index] for rank in range(processes)) / processes

    expected = (step_loss(first, before, 3)  # step 4, before the checkpoint
                + step_loss(second, after, 0) + step_loss(second, after, 1)) / 3  # 5, 6
    line = next(json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").open()
                if json.loads(line)["split"] == "train" and json.loads(line)["step"] == 6)
    # The same float32 losses summed in float64 in another order (and halved, exactly): the
    # two agree to float64 rounding, far below the factor 2 of the old mistake.
    assert line["loss"] == pytest.approx(expected, rel=1e-12)


def test_two_torchrun_nodes_on_one_machine_form_one_job(tmp_path):
    port = _free_port()
    nodes = [_torchrun("--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                       "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "two-nodes",
                       script_args=[*RUN, "--iters", "6", "--out", str(tmp_path), "--name",
                                    "nodes"],
                       env=_environment(tmp_path / "report"), wait=False) for _ in range(2)]
    # Each torchrun agent waits at its exit barrier (up to 300 s, torch's fixed default) for the
    # other; torch's barrier can miss the other agent's arrival (seen once in a CI rehearsal:
    # the run finished, one agent waited the whole 300 s). By torch's code (`_exit_barrier`)
    # the agent only logs that timeout and exits as it would have, so give the agents longer
    # than that before calling the job hung.
    try:
        outputs = [node.communicate(timeout=420)[0] for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
    assert [node.returncode for node in nodes] == [0, 0], outputs
    environment = json.loads((tmp_path / "nodes" / "config.json").read_text())["environment"]
    assert environment["processes"] == 2
    assert _max_difference(_parameters(tmp_path / "report", 0),
                           _parameters(tmp_path / "report", 1)) == 0.0


# ------------------------------------------------------------------ in one process
def test_torchrun_environment_is_read_and_checked():
    assert world_from_environment({}) == World()
    world = world_from_environment({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1",
                                    "LOCAL_WORLD_SIZE": "2", "TORCHELASTIC_RESTART_COUNT": "1",
                                    "TORCHELASTIC_MAX_RESTARTS": "2",
                                    "TORCHELASTIC_RUN_ID": "none",
                                    "TORCHELASTIC_USE_AGENT_STORE": "True"})
    assert (world.rank, world.size, world.local_rank, world.local_size) == (3, 4, 1, 2)
    assert (world.restarts, world.max_restarts, world.run_id, world.main) == (1, 2, None, False)
    assert world.shared_store
    with pytest.raises(UserError, match="RANK=4 does not fit WORLD_SIZE=4"):
        world_from_environment({"WORLD_SIZE": "4", "RANK": "4"})
    with pytest.raises(UserError, match="not a number"):
        world_from_environment({"WORLD_SIZE": "two"})


def test_a_restarted_group_does_not_read_what_the_last_attempt_left_in_torchruns_store(
        monkeypatch):
    # torchrun keeps its store across restarts; a dead rank's gloo address read from it made
    # the restarted group fail to connect, or hang until --dist-timeout.
    server = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(server.port))
    timeout = timedelta(seconds=10)
    first = _attempt_store(World(rank=0, size=2, launched=True, shared_store=True), timeout)
    first.set("address-of-rank-1", "the dead process's")
    again = _attempt_store(World(rank=0, size=2, restarts=1, launched=True, shared_store=True),
                           timeout)
    assert not again.check(["address-of-rank-1"])
    assert first.check(["address-of-rank-1"])


def test_each_cuda_process_takes_the_gpu_of_its_local_rank(monkeypatch):
    world = World(rank=3, size=4, local_rank=1, local_size=2, launched=True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert rank_device("auto", world) == "cuda:1" and rank_device("cuda", world) == "cuda:1"
    assert rank_device("cpu", world) == "cpu"
    with pytest.raises(UserError, match="local rank"):
        rank_device("cuda:0", world)
    assert rank_device("cuda:0", World()) == "cuda:0"  # one process: as asked


@pytest.mark.parametrize("pad, flip", [(2, True), (0, False)])
def test_the_processes_parts_of_a_batch_are_the_whole_batch(pad, flip):
    data = make_dataset(50, seed=0, channels=1, size=8)
    options = dict(shuffle=True, pad=pad, flip=flip, normalizer=None, seed=3, drop_last=False)
    whole = list(Loader(data, 12, **options).batches(epoch=1))
    parts = [list(Loader(data, 12, part=(rank, 3), **options).batches(epoch=1))
             for rank in range(3)]
    assert all(len(p) == len(whole) == 5 for p in parts)
    for i, (images, labels) in enumerate(whole):
        assert torch.equal(torch.cat([p[i][0] for p in parts]), images)
        assert torch.equal(torch.cat([p[i][1] for p in parts]), labels)


def test_a_global_batch_that_does_not_divide_among_the_processes_is_one_line():
    data = make_dataset(50, seed=0)
    with pytest.raises(UserError, match="batch_size 10 does not divide among 3 processes"):
        Loader(data, 10, shuffle=True, normalizer=None, part=(0, 3))


def test_sync_bn_on_the_cpu_says_it_needs_cuda(tmp_path, fake_rooms, capsys):
    args = ["train", "--model", "tiny", "--data", "fake", "--device", "cpu", "--iters", "2",
            "--batch-size", "16", "--sync-bn", "--out", str(tmp_path), "--progress", "none"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sync_bn needs CUDA" in err


def test_a_restartable_job_names_its_run_so_a_restart_finds_it(tmp_path, monkeypatch):
    config = tiny_config(out=str(tmp_path))
    with pytest.raises(UserError, match="give the run a --name"):
        new_run_dir(config, World(rank=0, size=2, max_restarts=2, launched=True))
    named = World(rank=0, size=2, max_restarts=2, run_id="job-42", launched=True)
    monkeypatch.setattr("resnets.train.runs.broadcast_text", lambda text, world, device: text)
    first, again = new_run_dir(config, named), new_run_dir(config, named)
    assert first.path == again.path and first.path.name.endswith("-job-42")


def test_checkpoint_every_writes_last_pt_between_evaluations(tmp_path, fake_rooms, monkeypatch):
    from resnets.train.state import TrainState

    saved, real_save = [], TrainState.save

    def save(self, path, lr):
        saved.append((Path(path).name, self.step))
        return real_save(self, path, lr)

    monkeypatch.setattr(TrainState, "save", save)
    fit(tiny_config(iters=8, eval_every=8, checkpoint_every=3), tmp_path / "r",
        progress="none", parts=fake_rooms)
    assert [step for name, step in saved if name == "last.pt"] == [3, 6, 8]
