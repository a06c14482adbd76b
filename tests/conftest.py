"""Fixtures shared by every test folder."""

import os
import signal

import pytest


@pytest.fixture(autouse=True, scope="session")
def idle_machine():
    """Every test (and module-scoped fixture) sees an idle machine: what a test prints must not
    depend on how busy the machine running it is (training warns when the load is above the
    core count). A test of that warning patches `os.getloadavg` itself."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0), raising=False)
        yield


@pytest.fixture(autouse=True, scope="session")
def glibc_malloc_left_alone():
    """The test process keeps glibc's own malloc settings: the commands the tests call in
    process would otherwise set `keep_freed_memory`'s thresholds for the whole session (the
    memory kept would grow it); tests/train/test_memory.py checks that function with a fake C
    library and, for real, in a child process."""
    import resnets.train.device as device

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(device, "_kept", [False])  # as if asked already, and not done
        yield


@pytest.fixture
def ctrl_c_after_step(monkeypatch):
    """`ctrl_c_after_step(n)`: deliver a real SIGINT (Ctrl-C) right after the n-th optimizer
    step the training loop takes (once: later steps, a resumed run's too, go through);
    `ctrl_c_after_step(n, signal.SIGTERM)` delivers that signal instead."""
    import resnets.train.loop as loop

    def arm(at_step: int, signal_number: int = signal.SIGINT) -> None:
        real_step, calls = loop.train_step, {"n": 0}

        def step_then_ctrl_c(*args, **kwargs):
            out = real_step(*args, **kwargs)
            calls["n"] += 1
            if calls["n"] == at_step:
                os.kill(os.getpid(), signal_number)
            return out

        monkeypatch.setattr(loop, "train_step", step_then_ctrl_c)

    return arm


@pytest.fixture
def one_error_line(capsys):
    """`one_error_line()`: what a command wrote to stderr, checked to be one `error: ` line."""

    def read() -> str:
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: "), err
        return err

    return read


@pytest.fixture
def refuse_writes_in(monkeypatch):
    """`refuse_writes_in(folder, errno)`: writing in `folder` fails as on a read-only folder
    (chmod 0o555 does not stop root, who runs the tests in some places)."""
    import os

    import resnets.atomic

    real = resnets.atomic.tempfile.TemporaryFile

    def arm(folder, number) -> None:
        def refuse(*args, dir=None, **kwargs):
            if dir is not None and os.path.samefile(dir, folder):
                raise OSError(number, os.strerror(number), str(dir))
            return real(*args, dir=dir, **kwargs)

        monkeypatch.setattr(resnets.atomic.tempfile, "TemporaryFile", refuse)

    return arm


@pytest.fixture
def read_only(monkeypatch):
    """`read_only(folder, errno=EACCES)`: from now on nothing can be created, written, renamed
    or made in `folder` (or below it), as in a read-only folder or on a read-only mount; reads
    still work. Patches the calls every writer ends in (open, os.open, os.mkdir, os.replace,
    os.rename), since chmod does not stop root, who runs the tests in some places."""
    import builtins
    import errno as errno_module
    import io
    from pathlib import Path

    real = {"open": builtins.open, "os.open": os.open, "mkdir": os.mkdir,
            "replace": os.replace, "rename": os.rename}
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def arm(folder, number: int = errno_module.EACCES) -> None:
        folder = Path(os.path.abspath(folder))

        def inside(path) -> bool:
            if isinstance(path, int):  # a file descriptor: already open
                return False
            path = Path(os.path.abspath(os.fsdecode(path)))
            return path == folder or folder in path.parents

        def refuse(path):
            raise OSError(number, os.strerror(number), os.fsdecode(path))

        def open_(file, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax+") and inside(file):
                refuse(file)
            return real["open"](file, mode, *args, **kwargs)

        def os_open(path, flags, *args, **kwargs):
            if flags & write_flags and inside(path):
                refuse(path)
            return real["os.open"](path, flags, *args, **kwargs)

        def mkdir(path, *args, **kwargs):
            if inside(path):
                refuse(path)
            return real["mkdir"](path, *args, **kwargs)

        def move(name):
            def moved(source, target, *args, **kwargs):
                for path in (source, target):
                    if inside(path):
                        refuse(path)
                return real[name](source, target, *args, **kwargs)
            return moved

        monkeypatch.setattr(builtins, "open", open_)
        monkeypatch.setattr(io, "open", open_)
        monkeypatch.setattr(os, "open", os_open)
        monkeypatch.setattr(os, "mkdir", mkdir)
        monkeypatch.setattr(os, "replace", move("replace"))
        monkeypatch.setattr(os, "rename", move("rename"))

    return arm


@pytest.fixture
def photo_tree(tmp_path):
    """A small ImageNet-style tree (photo_trees.write_photo_tree): 2 classes x 8 training images
    of varied sizes and modes, 2 x 2 validation images."""
    from photo_trees import write_photo_tree

    return write_photo_tree(tmp_path / "photos")


@pytest.fixture
def published(monkeypatch):
    """`published(model, data)`: torchvision's v1 release of `model` as if its file held
    `data` (its URL's file name and hash become those of `data`); returns that file name. A
    test's own file cannot match a real release's hash, and a file in torch's hub cache is
    checked against the hash in its name (resnets.models.hub)."""
    import dataclasses
    import hashlib

    import resnets.models.weights as weights

    def publish(model: str, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()[:8]
        name = f"{model}-{digest}.pth"
        entries = [dataclasses.replace(r, url=f"{r.url.rsplit('/', 1)[0]}/{name}", sha256=digest)
                   if (r.model, r.version) == (model, "v1") else r for r in weights.releases()]
        monkeypatch.setattr(weights, "releases", lambda: entries)
        return name

    return publish


@pytest.fixture(autouse=True, scope="session")
def measured_machine(tmp_path_factory):
    """Precision "auto" and the inference engine are chosen by timing this machine
    (resnets.train.probe, resnets.train.engine); no test times anything. Every test sees the
    same given measurements instead, in a cache folder of its own (nothing written to the
    user's ~/.cache): fp32 trains faster; bf16 inference is faster where the CPU has native
    bf16 (what the earlier flag rule said); onnxruntime is slower at every batch size, so no
    test exports a model unless it asks for onnxruntime. Tests of the choice itself give
    their own measurements."""
    import resnets.train.engine as engine
    import resnets.train.probe as probe
    from resnets.train.device import cpu_has_native_bf16

    folder = tmp_path_factory.mktemp("resnets-cache")
    fast_bf16 = cpu_has_native_bf16()

    def inference(onnxruntime: bool) -> dict:
        if onnxruntime:
            return {"onnxruntime": [1.0] * len(engine.PROBE_BATCHES)}
        return {"fp32": [1e-3] * len(engine.PROBE_BATCHES),
                "bf16": [(5e-4 if fast_bf16 else 2e-3)] * len(engine.PROBE_BATCHES)}

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(probe, "cache_root", lambda: folder)
        patch.setattr(probe, "measure_training", lambda device: {"fp32": 1.0, "bf16": 2.0})
        patch.setattr(engine, "measure_inference", inference)
        yield
