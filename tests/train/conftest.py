"""Tiny stand-ins for the model and data rooms, given to training as `Parts`.

`fake_rooms` is a `Parts` of a tiny model, generated data, a simple normaliser and loader, so
the loop's own behaviour (resume, Ctrl-C, divergence, checkpoints, metrics) is tested in a
fraction of a second. It is also made the default parts for the test, so code that reaches
`fit` through the command line trains on the stand-ins too.
"""

from __future__ import annotations

import pytest

import resnets.train.parts as parts_module
from resnets.train.parts import Parts
from train_fakes import FakeLoader, FakeNormalizer, fake_create_model, fake_load_dataset


@pytest.fixture
def fake_rooms(monkeypatch) -> Parts:
    fakes = Parts(create_model=fake_create_model, load_dataset=fake_load_dataset,
                  fit_normalizer=FakeNormalizer.fit,
                  normalizer_from_state=FakeNormalizer.from_state_dict, make_loader=FakeLoader)
    monkeypatch.setattr(parts_module, "default_parts", lambda: fakes)
    return fakes
