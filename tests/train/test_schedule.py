import math

import pytest
import torch

from resnets import create_model
from resnets.train.config import resolve_config
from resnets.train.schedule import lr_at, schedule_from_config


def test_paper_step_schedule_divides_by_10_at_32k_and_48k():
    lr = lambda step: lr_at(step, lr=0.1, total_steps=64000, schedule="step",
                            milestones=(32000, 48000))
    assert lr(0) == 0.1 and lr(31999) == 0.1
    assert lr(32000) == pytest.approx(0.01) and lr(47999) == pytest.approx(0.01)
    assert lr(48000) == pytest.approx(0.001) and lr(63999) == pytest.approx(0.001)


def test_constant_warmup_holds_0_01_for_400_steps_then_0_1():
    lr = lambda step: lr_at(step, lr=0.1, total_steps=64000, schedule="step",
                            milestones=(32000, 48000), warmup=400, warmup_mode="constant",
                            warmup_lr=0.01)
    assert lr(0) == 0.01 and lr(399) == 0.01
    assert lr(400) == 0.1  # the warm-up exit
    assert lr(32000) == pytest.approx(0.01)


def test_linear_warmup_reaches_peak_at_its_exit_then_cosine_decays_to_zero():
    lr = lambda step: lr_at(step, lr=0.2, total_steps=110, schedule="cosine", warmup=10)
    assert lr(0) == pytest.approx(0.02) and lr(9) == pytest.approx(0.2)
    assert lr(10) == pytest.approx(0.2)  # cosine starts at the peak
    assert lr(60) == pytest.approx(0.1)  # half way through the decay
    assert lr(110) == pytest.approx(0.0, abs=1e-12)
    values = [lr(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_step_schedule_without_milestones_uses_half_and_three_quarters():
    lr = lambda step: lr_at(step, lr=1.0, total_steps=100, schedule="step")
    assert (lr(49), lr(50), lr(74), lr(75)) == (1.0, pytest.approx(0.1), pytest.approx(0.1),
                                                pytest.approx(0.01))


def test_lr_is_a_pure_function_of_the_step():
    config = resolve_config("quick")
    first, second = schedule_from_config(config, 500), schedule_from_config(config, 500)
    assert [first(s) for s in range(0, 500, 7)] == [second(s) for s in range(500)][::7]


@pytest.mark.parametrize("model, warmed", [("resnet56", False), ("resnet110", True),
                                           ("plain110", True), ("resnet1202", True)])
def test_paper_warmup_applies_only_from_depth_110(model, warmed):
    config = resolve_config("paper-cifar", overrides={"model": model})
    with torch.device("meta"):
        depth = create_model(model).depth  # the built model's depth, not a parsed name
    lr = schedule_from_config(config, config.iters, depth=depth)
    assert lr(0) == (0.01 if warmed else 0.1)
    assert lr(400) == 0.1


def test_paper_warmup_follows_the_built_models_depth_and_is_off_when_unknown():
    config = resolve_config("paper-cifar", overrides={"model": "cifar_plain"})
    for depth, first_lr in ((56, 0.1), (110, 0.01), (None, 0.1)):
        assert schedule_from_config(config, config.iters, depth=depth)(0) == first_lr


def test_constant_schedule_holds_the_rate():
    assert math.isclose(lr_at(5, lr=0.3, total_steps=10, schedule="constant"), 0.3)


def test_linear_schedule_falls_in_a_straight_line_to_zero_after_the_warmup():
    lr = lambda step: lr_at(step, lr=0.4, total_steps=140, schedule="linear", warmup=40)
    assert lr(0) == pytest.approx(0.01) and lr(39) == pytest.approx(0.4)
    assert lr(40) == pytest.approx(0.4)  # the decay starts at the peak
    assert lr(90) == pytest.approx(0.2)  # half way through the decay, half the peak
    assert lr(140) == pytest.approx(0.0, abs=1e-12)
    steps = [lr(s) for s in range(40, 141)]
    drops = [a - b for a, b in zip(steps, steps[1:])]
    assert drops == pytest.approx([0.4 / 100] * 100)  # a straight line: equal drops
