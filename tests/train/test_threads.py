"""CPU threads: `threads` sets torch's count for the training (each torchrun process gets its
share of the cores by default), and a machine already busy is reported in one line."""

import json
import math
import os

import pytest
import torch

from resnets.cli import main
from resnets.errors import UserError
from resnets.train import TrainingInterrupted, fit, resolve_config
from resnets.train import device
from resnets.train.device import busy_warning, cpu_threads, own_load, resolve_threads
from resnets.train.progress import Progress

from test_cli import TINY
from train_fakes import tiny_config


def _other_than_default() -> int:
    return 2 if torch.get_num_threads() == 1 else 1


def test_threads_is_a_validated_run_setting():
    assert resolve_config(overrides={"iters": 1}).threads is None
    assert resolve_config(overrides={"iters": 1, "threads": "3"}).threads == 3
    with pytest.raises(UserError, match="threads must be >= 1, got 0"):
        resolve_config(overrides={"iters": 1, "threads": 0})


def test_threads_flag_error_is_one_line(tmp_path, fake_rooms, one_error_line):
    assert main(["train", *TINY, "--iters", "1", "--threads", "0", "--out", str(tmp_path)]) == 2
    assert "threads must be >= 1" in one_error_line()


def test_given_threads_win_else_a_torchrun_process_gets_its_share_of_the_cores(monkeypatch):
    monkeypatch.setattr(device, "available_cores", lambda: 8)
    assert resolve_threads(3, {"LOCAL_WORLD_SIZE": "4"}) == 3
    assert resolve_threads(None, {"LOCAL_WORLD_SIZE": "4"}) == 2
    assert resolve_threads(None, {"LOCAL_WORLD_SIZE": "16"}) == 1  # never 0
    assert resolve_threads(None, {"LOCAL_WORLD_SIZE": "1"}) == torch.get_num_threads()
    assert resolve_threads(None, {}) == torch.get_num_threads()  # torch's default


def test_cpu_threads_gives_back_the_count_it_found():
    before = torch.get_num_threads()
    with cpu_threads(_other_than_default()) as count:
        assert torch.get_num_threads() == count != before
    assert torch.get_num_threads() == before


class _ThreadsSeen(Progress):
    def __init__(self):
        self.seen = set()

    def step(self, step):
        self.seen.add(torch.get_num_threads())


def test_fit_trains_with_the_threads_asked_for_and_records_them(tmp_path, fake_rooms):
    before, threads, display = torch.get_num_threads(), _other_than_default(), _ThreadsSeen()
    fit(tiny_config(iters=3, threads=threads), tmp_path / "run", progress=display)
    assert display.seen == {threads}
    assert torch.get_num_threads() == before  # the caller's setting is left alone
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["threads"] == threads and saved["environment"]["threads"] == threads


def test_threads_may_change_on_resume(tmp_path, fake_rooms, ctrl_c_after_step):
    ctrl_c_after_step(2)
    with pytest.raises(TrainingInterrupted):
        fit(tiny_config(iters=4), tmp_path / "run", progress="none")
    summary = fit(tiny_config(iters=4, threads=1), tmp_path / "run", resume=True,
                  progress="none")
    assert summary["steps"] == 4


def test_busy_warning_is_one_line_only_when_the_load_is_above_the_cores():
    assert busy_warning(2.0, 2) is None and busy_warning(0.3, 16) is None
    line = busy_warning(3.24, 2)
    assert "\n" not in line
    assert line.startswith("this machine is busy (load 3.2 on 2 cores): training will be "
                           "much slower")
    assert "--threads N" in line


def _busy(monkeypatch) -> float:
    load = 3.0 * (os.cpu_count() or 1) + 0.5
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    return load


def test_fit_warns_at_the_start_when_the_machine_is_busy(tmp_path, fake_rooms, monkeypatch):
    load = _busy(monkeypatch)
    with pytest.warns(UserWarning, match=rf"busy \(load {load:.1f} on {os.cpu_count()} cores"):
        fit(tiny_config(iters=2), tmp_path / "run", progress="none")


def test_train_command_prints_the_busy_warning_in_one_line(tmp_path, fake_rooms, monkeypatch,
                                                           capsys):
    _busy(monkeypatch)
    assert main(["train", *TINY, "--iters", "2", "--out", str(tmp_path), "--name", "r"]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: this machine is busy (load ")


def test_a_busy_check_takes_out_the_load_this_process_left_itself(monkeypatch):
    """A study trains its runs one after another in one process: the next run's check sees
    the previous run in the 1-minute load average (it lags) and must not call that busy; the
    same load from another program still is."""
    import resnets.train.device as device

    cores = os.cpu_count() or 1
    clock, cpu = [1000.0], [50.0]
    monkeypatch.setattr(device.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(device, "_cpu_seconds", lambda: cpu[0])
    monkeypatch.setattr(device, "_since", [1000.0, 50.0])
    # the previous run: every core busy for 5 minutes, the load average full of it
    monkeypatch.setattr(os, "getloadavg", lambda: (cores + 0.9, cores, cores))
    clock[0] += 300.0
    cpu[0] += 300.0 * cores
    assert device.machine_busy_warning() is None  # our own run: cores * (1 - e^-5) taken out
    # the same load, not ours (this process idle for the last 5 minutes): busy
    clock[0] += 300.0
    assert device.machine_busy_warning().startswith(f"this machine is busy (load {cores + 0.9:.1f}")


def test_a_parallel_studys_workers_take_out_their_siblings_load(monkeypatch):
    """`resnets study --jobs 2` on 2 cores: each worker sees the other in the load average;
    the study tells each worker its siblings' load, which is taken out; more than that is
    still busy."""
    import resnets.train.device as device

    cores = os.cpu_count() or 1
    monkeypatch.setattr(device, "own_load", lambda cpu, wall: 0.0)  # this process: idle
    monkeypatch.setattr(os, "getloadavg", lambda: (cores + 0.9, cores, cores))
    monkeypatch.delenv(device.SIBLING_LOAD_ENV, raising=False)
    assert device.machine_busy_warning() is not None
    monkeypatch.setenv(device.SIBLING_LOAD_ENV, "1")
    assert device.machine_busy_warning() is None
    # a probe's timing beside the siblings is still not clean: it asks without them
    assert device.machine_busy_warning(siblings=False) is not None
    monkeypatch.setattr(os, "getloadavg", lambda: (cores + 2.5, cores, cores))
    assert device.machine_busy_warning() is not None  # someone else's load besides
    for bad in ("nan", "-3", "x"):
        monkeypatch.setenv(device.SIBLING_LOAD_ENV, bad)
        assert device.sibling_load() == 0.0


def test_a_parallel_study_tells_each_worker_its_siblings_load(tmp_path, monkeypatch):
    import subprocess

    import resnets.study.parallel as parallel
    from resnets.train.device import SIBLING_LOAD_ENV

    seen = {}

    class Started:  # stands in for the worker process
        def __init__(self, command, env, **options):
            seen.update(env=env)

    monkeypatch.setattr(subprocess, "Popen", Started)
    workers = parallel.Workers(tmp_path, 3, progress="none")
    (tmp_path / "logs").mkdir(exist_ok=True)

    class Run:
        name = "resnet20-seed0"

    workers.start(Run(), 0, threads=2, device=None)
    assert seen["env"][SIBLING_LOAD_ENV] == "0"  # the first: no other worker runs yet
    workers.start(Run(), 1, threads=2, device=None)
    workers.start(Run(), 2, threads=2, device=None)
    assert seen["env"][SIBLING_LOAD_ENV] == "4"  # two other workers of 2 threads each


def test_own_load_follows_the_load_averages_one_minute_decay():
    assert own_load(0.0, 10.0) == 0.0 and own_load(5.0, 0.0) == 0.0
    assert own_load(120.0, 60.0) == pytest.approx(2 * (1 - math.exp(-1)))  # 2 cores, 1 minute
    assert own_load(2 * 3600.0, 3600.0) == pytest.approx(2.0)  # long busy: all of its 2 cores
