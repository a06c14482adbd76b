"""Fixtures shared by every test folder."""

import os
import signal

import pytest


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
def photo_tree(tmp_path):
    """A small ImageNet-style tree (photo_trees.write_photo_tree): 2 classes x 8 training images
    of varied sizes and modes, 2 x 2 validation images."""
    from photo_trees import write_photo_tree

    return write_photo_tree(tmp_path / "photos")
