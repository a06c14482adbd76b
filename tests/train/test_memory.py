"""glibc keeps the memory of freed CPU tensors for reuse in the commands that run networks:
the right mallopt calls, once per process, and none where the user set malloc tunables or
malloc is not glibc's."""

import platform
import subprocess
import sys

import pytest

import resnets.train.device as device
from resnets.cli import main


class FakeLibc:
    def __init__(self):
        self.calls = []

    def mallopt(self, parameter, value):
        self.calls.append((parameter, value))
        return 1


@pytest.fixture
def fake_libc(monkeypatch):
    libc = FakeLibc()
    monkeypatch.setattr(device, "_glibc", lambda: libc)
    monkeypatch.setattr(device, "_kept", [])
    return libc


def test_keeps_blocks_up_to_1_gib_and_the_heap_top(fake_libc):
    assert device.keep_freed_memory(environ={}) is True
    assert fake_libc.calls == [(-3, 2**30), (-1, 2**30)]  # M_MMAP_, M_TRIM_THRESHOLD
    assert device.keep_freed_memory(environ={}) is True  # once per process
    assert len(fake_libc.calls) == 2


def test_an_older_glibc_keeps_blocks_up_to_32_mib(monkeypatch, fake_libc):
    refuses_large = lambda parameter, value: int(not (parameter == -3 and value > 32 * 2**20))
    monkeypatch.setattr(fake_libc, "mallopt",
                        lambda p, v: fake_libc.calls.append((p, v)) or refuses_large(p, v))
    assert device.keep_freed_memory(environ={}) is True
    assert fake_libc.calls == [(-3, 2**30), (-3, 32 * 2**20), (-1, 2**30)]


def test_the_users_own_malloc_tunables_win(fake_libc):
    tunables = {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"}
    assert device.keep_freed_memory(environ=tunables) is False
    assert fake_libc.calls == []


def test_no_glibc_no_call(monkeypatch):
    monkeypatch.setattr(device, "_glibc", lambda: None)
    monkeypatch.setattr(device, "_kept", [])
    assert device.keep_freed_memory(environ={}) is False


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="glibc only")
def test_glibc_takes_the_settings():
    # In a child process: the settings would otherwise hold for the rest of this test session.
    code = ("import resnets.train.device as d; "
            "print(d.keep_freed_memory(environ={}), d._glibc().mallopt(d.M_MMAP_THRESHOLD, "
            "d.MMAP_THRESHOLDS[-1]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["True", "1"]


def test_the_older_malloc_variables_are_the_users_own_too(fake_libc):
    assert device.keep_freed_memory(environ={"MALLOC_MMAP_THRESHOLD_": "131072"}) is False
    assert fake_libc.calls == []


def test_only_commands_that_run_networks_ask(fake_libc, capsys):
    assert main(["list"]) == 0
    assert fake_libc.calls == []
    assert main(["eval", "no-such-run"]) == 2  # asked before the command ran
    assert len(fake_libc.calls) == 2


def test_a_studys_worker_process_asks_too(tmp_path):
    # A worker process of `study --jobs N` (in a child: it rewires its own stdout), with a fake
    # C library; it fails to read the study, after asking.
    code = "\n".join([
        "import sys", "import resnets.train.device as d", "calls = []",
        "class Libc:",
        "    def mallopt(self, parameter, value):",
        "        calls.append(parameter)",
        "        return 1",
        "d._glibc = lambda: Libc()",
        "from resnets.study.worker import worker_main",
        "try:",
        f"    worker_main([{str(tmp_path / 'no-study')!r}, 'resnet20'])",
        "except BaseException:",
        "    pass",
        "sys.stderr.write(f'mallopt calls: {len(calls)}')"])
    # stdin stays open, as the study process holds it: at end of file the worker would stop
    # itself with a SIGINT, which on a loaded machine can land after the line is written.
    with subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as worker:
        stderr = worker.stderr.read()  # to its end: the worker has exited
        worker.stdin.close()
    assert stderr.strip().endswith("mallopt calls: 2"), stderr
