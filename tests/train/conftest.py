"""Tiny stand-ins for the model and data rooms, built to the interfaces in the brief.

The training loop reaches models and data only through five functions in
`resnets.train.loop`; `fake_rooms` patches them so the loop's own behaviour (resume, Ctrl-C,
divergence, checkpoints, metrics) is tested in a fraction of a second.
"""

from __future__ import annotations

import pytest

import resnets.train.loop as loop
from train_fakes import FakeLoader, FakeNormalizer, fake_create_model, fake_load_dataset


@pytest.fixture
def fake_rooms(monkeypatch):
    monkeypatch.setattr(loop, "create_model", fake_create_model)
    monkeypatch.setattr(loop, "load_dataset", fake_load_dataset)
    monkeypatch.setattr(loop, "fit_normalizer", FakeNormalizer.fit)
    monkeypatch.setattr(loop, "normalizer_from_state", FakeNormalizer.from_state_dict)
    monkeypatch.setattr(loop, "make_loader", FakeLoader)


