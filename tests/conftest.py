"""Fixtures shared by every test folder."""

import os
import signal

import pytest


@pytest.fixture
def ctrl_c_after_step(monkeypatch):
    """`ctrl_c_after_step(n)`: deliver a real SIGINT (Ctrl-C) right after the n-th optimizer
    step the training loop takes (once: later steps, a resumed run's too, go through)."""
    import resnets.train.loop as loop

    def arm(at_step: int) -> None:
        real_step, calls = loop.train_step, {"n": 0}

        def step_then_ctrl_c(*args, **kwargs):
            out = real_step(*args, **kwargs)
            calls["n"] += 1
            if calls["n"] == at_step:
                os.kill(os.getpid(), signal.SIGINT)
            return out

        monkeypatch.setattr(loop, "train_step", step_then_ctrl_c)

    return arm
