"""A normaliser read from a file (a checkpoint, pretrained weights) is checked before use."""

import pytest
import torch

from resnets.data.normalize import Normalizer
from resnets.errors import UserError


def _state(mean, std, kind="channel"):
    return {"kind": kind, "mean": torch.tensor(mean).view(-1, 1, 1),
            "std": torch.tensor(std).view(-1, 1, 1)}


@pytest.mark.parametrize("mean, std, words", [
    ([float("nan")], [64.0], "normaliser mean holds nan"),
    ([120.0], [0.0], "normaliser std holds 0.0 (1 of 1 values outside (0, 255]"),
    ([120.0], [-3.0], "normaliser std holds -3.0"),
    ([120.0, 1e6, 3.0], [60.0, 60.0, 60.0], "normaliser mean holds 1000000.0 (1 of 3 values"),
    ([120.0], [float("inf")], "normaliser std holds inf"),
])
def test_a_normaliser_of_values_off_the_pixel_scale_is_refused(mean, std, words):
    with pytest.raises(UserError) as refused:
        Normalizer.from_state_dict(_state(mean, std))
    assert words in str(refused.value)


def test_a_normaliser_on_the_pixel_scale_loads():
    imagenet = _state([0.485 * 255, 0.456 * 255, 0.406 * 255], [0.229 * 255, 0.224 * 255, 0.225 * 255])
    assert Normalizer.from_state_dict(imagenet).kind == "channel"
    assert Normalizer.from_state_dict(_state([0.0], [255.0], kind="none")).kind == "none"
