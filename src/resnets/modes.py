"""The eval-mode context: every measurement (evaluation, FLOP counts, diagnostics) runs a model
in a chosen mode and gives it back in the mode it had."""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn


@contextlib.contextmanager
def eval_mode(model: nn.Module, training: bool = False) -> Iterator[nn.Module]:
    """Put `model` in eval mode (or training mode, with `training=True`) for the block, then
    restore the mode it had, whatever happens inside."""
    was_training = model.training
    model.train(training)
    try:
        yield model
    finally:
        model.train(was_training)
