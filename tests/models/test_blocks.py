"""Units and shortcuts: the residual unit of section 3 and its plain twin."""

import pytest
import torch

from resnets.models.blocks import (
    BasicUnit,
    BottleneckUnit,
    PreActBasicUnit,
    PreActBottleneckUnit,
    ZeroPadShortcut,
)


def _unit(kind, in_channels, channels, stride, shortcut):
    unit = kind(in_channels, channels, stride, shortcut=shortcut)
    unit.eval()  # BN uses its running statistics (mean 0, var 1): the branch is deterministic
    return unit


@pytest.mark.parametrize("kind,in_channels,channels", [(BasicUnit, 8, 8), (BottleneckUnit, 16, 4)])
@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_zero_branch_unit_is_identity(kind, in_channels, channels, shortcut):
    torch.manual_seed(0)
    unit = _unit(kind, in_channels, channels, 1, shortcut)
    unit.zero_init_last()
    x = torch.rand(2, in_channels, 6, 6)  # non-negative, as a ReLU output is
    assert torch.equal(unit(x), x)


@pytest.mark.parametrize("kind,in_channels,channels", [(BasicUnit, 8, 8), (BottleneckUnit, 16, 4)])
def test_zero_branch_unit_with_projection_everywhere_outputs_its_shortcut(kind, in_channels, channels):
    # Option C projects even where shapes match, so the unit reduces to g(projection(x)).
    torch.manual_seed(0)
    unit = _unit(kind, in_channels, channels, 1, "C")
    unit.zero_init_last()
    x = torch.rand(2, in_channels, 6, 6)
    assert torch.allclose(unit(x), torch.relu(unit.downsample(x)))
    assert not torch.allclose(unit(x), x)


@pytest.mark.parametrize("kind,in_channels,channels", [(BasicUnit, 8, 16), (BottleneckUnit, 16, 8)])
def test_zero_branch_unit_where_shape_changes_outputs_its_shortcut(kind, in_channels, channels):
    # Option A: the subsampled input with zero channels appended; option B: g(projection(x)).
    torch.manual_seed(0)
    x = torch.rand(2, in_channels, 8, 8)
    unit_a = _unit(kind, in_channels, channels, 2, "A")
    unit_a.zero_init_last()
    out = unit_a(x)
    assert torch.equal(out[:, :in_channels], x[:, :, ::2, ::2])
    assert torch.count_nonzero(out[:, in_channels:]) == 0
    unit_b = _unit(kind, in_channels, channels, 2, "B")
    unit_b.zero_init_last()
    assert torch.allclose(unit_b(x), torch.relu(unit_b.downsample(x)))


@pytest.mark.parametrize("kind", [BasicUnit, BottleneckUnit])
def test_zero_branch_plain_unit_outputs_zero_not_its_input(kind):
    unit = _unit(kind, 16, 16 // kind.expansion, 1, "none")
    unit.zero_init_last()
    x = torch.rand(2, 16, 6, 6) + 0.1
    assert torch.equal(unit(x), torch.zeros_like(x))


@pytest.mark.parametrize("kind,in_channels,channels", [(PreActBasicUnit, 8, 8), (PreActBottleneckUnit, 16, 4)])
def test_zero_branch_preact_unit_is_identity_on_any_input(kind, in_channels, channels):
    unit = _unit(kind, in_channels, channels, 1, "B")
    unit.zero_init_last()
    x = torch.randn(2, in_channels, 5, 5)  # negative values too: nothing follows the addition
    assert torch.equal(unit(x), x)


def test_option_a_subsamples_and_zero_pads_new_channels():
    x = torch.arange(2 * 4 * 4 * 4, dtype=torch.float32).reshape(2, 4, 4, 4)
    out = ZeroPadShortcut(4, 8, stride=2)(x)
    assert out.shape == (2, 8, 2, 2)
    assert torch.equal(out[:, :4], x[:, :, ::2, ::2])
    assert torch.equal(out[:, 4:], torch.zeros(2, 4, 2, 2))
    assert sum(p.numel() for p in ZeroPadShortcut(4, 8, 2).parameters()) == 0


@pytest.mark.parametrize(
    "shortcut,in_channels,stride,projection",
    [("A", 8, 2, False), ("B", 8, 2, True), ("B", 16, 1, False), ("C", 16, 1, True), ("A", 16, 1, False)],
)
def test_shortcut_options_project_only_where_the_paper_says(shortcut, in_channels, stride, projection):
    unit = BasicUnit(in_channels, 16, stride, shortcut=shortcut)
    has_params = any(True for _ in unit.downsample.parameters())
    assert has_params == projection
    assert unit(torch.randn(2, in_channels, 8, 8)).shape == (2, 16, 8 // stride, 8 // stride)


@pytest.mark.parametrize("stride_on,expected", [("1x1", (2, 1)), ("3x3", (1, 2))])
def test_bottleneck_stride_placement(stride_on, expected):
    unit = BottleneckUnit(64, 32, 2, shortcut="B", bottleneck_stride=stride_on)
    assert (unit.conv1.stride[0], unit.conv2.stride[0]) == expected
    assert unit(torch.randn(2, 64, 8, 8)).shape == (2, 128, 4, 4)


def test_units_have_separate_activation_modules_for_hooks():
    unit = BasicUnit(8, 8, shortcut="A")
    assert unit.act1 is not unit.act2
    bottleneck = BottleneckUnit(16, 4, shortcut="B")
    assert len({id(bottleneck.act1), id(bottleneck.act2), id(bottleneck.act3)}) == 3


@pytest.mark.parametrize("kind,in_channels,channels,stride", [
    (BasicUnit, 8, 16, 2), (BottleneckUnit, 16, 8, 2), (PreActBasicUnit, 8, 16, 2), (PreActBottleneckUnit, 16, 8, 1),
])
def test_unit_output_is_branch_plus_shortcut(kind, in_channels, channels, stride):
    torch.manual_seed(0)
    unit = _unit(kind, in_channels, channels, stride, "B")
    x = torch.randn(2, in_channels, 8, 8)
    with torch.no_grad():
        summed = unit.branch(x) + unit.shortcut(x)
        expected = summed if kind in (PreActBasicUnit, PreActBottleneckUnit) else torch.relu(summed)
        assert torch.allclose(unit(x), expected, atol=1e-6)
