"""Residual units and their shortcuts (He et al. 2015, sections 3.2-3.3; He et al. 2016).

A post-activation basic unit computes `a[l+2] = g(z[l+2] + a[l])`: two 3x3 conv layers with
BatchNorm (the branch), ReLU after the first and after the addition. A plain unit is the same
class with `shortcut="none"`: same layers, same parameter names, no addition.

Parameter names follow torchvision (`conv1 bn1 conv2 bn2 [conv3 bn3] downsample.0/.1`) so that
torchvision state dicts load strictly. `downsample` is torchvision's name for the shortcut path:
`nn.Identity` where the shapes match, a parameter-free `ZeroPadShortcut` (option A) or a
1x1 conv + BN projection (options B and C) where they do not, `None` in a plain unit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from resnets.errors import UserError

SHORTCUTS = ("A", "B", "C", "none")
BOTTLENECK_STRIDES = ("1x1", "3x3")


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (BN follows it)."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution with no bias (BN follows it)."""
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class ZeroPadShortcut(nn.Module):
    """Option A: subsample by the stride, then append zero channels. No parameters."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"option A cannot reduce channels ({in_channels} -> {out_channels})")
        self.extra_channels = out_channels - in_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, C_out, H/s, W/s)
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        # F.pad's last pair pads dim 1 (channels) when given six values: (W, W, H, H, C, C).
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_channels={self.extra_channels}"


def make_shortcut(
    kind: str, in_channels: int, out_channels: int, stride: int, *, normalize: bool = True
) -> nn.Module | None:
    """The shortcut path of a unit: option A, B or C of section 3.3, or None for a plain unit.

    `normalize=False` gives a projection without BN (pre-activation units, whose input is
    already normalized).
    """
    check_choice("shortcut", kind, SHORTCUTS)
    if kind == "none":
        return None
    same_shape = stride == 1 and in_channels == out_channels
    if kind == "A":
        return nn.Identity() if same_shape else ZeroPadShortcut(in_channels, out_channels, stride)
    if kind == "B" and same_shape:
        return nn.Identity()
    projection = [conv1x1(in_channels, out_channels, stride)]
    if normalize:
        projection.append(nn.BatchNorm2d(out_channels))
    return nn.Sequential(*projection)


def check_choice(what: str, value: object, valid: tuple) -> None:
    if value not in valid:
        raise UserError(f"unknown {what} {value!r}; valid: {', '.join(map(repr, valid))}")


class PostActUnit(nn.Module):
    """What the paper's post-activation units share: the shortcut, and the forward step
    `a[l+2] = g(z[l+2] + a[l])`, with g the unit's last activation (`self.act_out`).

    A subclass builds its layers, sets `self.downsample` with `make_shortcut` (None for the
    plain twin) and defines `branch`, the residual function F.
    """

    downsample: nn.Module | None

    @property
    def residual(self) -> bool:
        return self.downsample is not None

    @property
    def act_out(self) -> nn.Module:
        """The activation after the addition (act2 of a basic unit, act3 of a bottleneck)."""
        raise NotImplementedError

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        """The skip path: x itself, zero-padded (A) or projected (B/C) to the output's shape."""
        return self.downsample(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.residual:  # plain twin: same layers, no addition
            return self.act_out(self.branch(x))
        return self.act_out(self.branch(x) + self.shortcut(x))

    def forward_without_branch(self, x: torch.Tensor) -> torch.Tensor:
        """The unit with its branch deleted (a lesion, Veit et al. 2016): `forward` with
        F(x) = 0, act_out(shortcut(x)). A plain unit becomes the identity (`without_branch`)."""
        return without_branch(self, x, self.act_out)


class BasicUnit(PostActUnit):
    """Two 3x3 conv layers: `out = act2(bn2(conv2(act1(bn1(conv1(x))))) + shortcut(x))`."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1, *, shortcut: str = "A"):
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = conv3x3(in_channels, channels, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act2 = nn.ReLU(inplace=True)
        self.downsample = make_shortcut(shortcut, in_channels, out_channels, stride)
        self.stride = stride
        self.changes_shape = stride != 1 or in_channels != out_channels

    @property
    def act_out(self) -> nn.Module:
        return self.act2

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        """F(x): the residual function the unit learns. (B, C_in, H, W) -> (B, C_out, H/s, W/s)."""
        return self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))

    def zero_init_last(self) -> None:
        """Zero the scale of the branch's last BN, so the branch outputs 0 and a residual unit
        starts as the identity (on non-negative inputs, since g = ReLU follows the addition)."""
        nn.init.zeros_(self.bn2.weight)



class BottleneckUnit(PostActUnit):
    """1x1 reduce, 3x3, 1x1 restore (x4 channels), for ResNet-50/101/152.

    `bottleneck_stride="1x1"` puts the stride on the first 1x1 conv, as the paper does (v1);
    `"3x3"` puts it on the 3x3 conv, as torchvision does (v1.5). The parameters are the same.
    """

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1, *, shortcut: str = "B",
                 bottleneck_stride: str = "1x1"):
        super().__init__()
        out_channels = channels * self.expansion
        stride_1x1, stride_3x3 = _bottleneck_strides(stride, bottleneck_stride)
        self.conv1 = conv1x1(in_channels, channels, stride_1x1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(channels, channels, stride_3x3)
        self.bn2 = nn.BatchNorm2d(channels)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = conv1x1(channels, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = make_shortcut(shortcut, in_channels, out_channels, stride)
        self.stride = stride
        self.changes_shape = stride != 1 or in_channels != out_channels

    @property
    def act_out(self) -> nn.Module:
        return self.act3

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)



class PreActUnit(nn.Module):
    """What the pre-activation units (He et al. 2016) share: `out = F(pre) + shortcut(x)` with
    `pre = act1(bn1(x))`, and nothing after the addition, so a unit whose branch is zeroed is
    the identity on any input. A projection shortcut reads the pre-activated input, as in the
    paper's code; an identity shortcut reads x itself.

    A subclass builds bn1/act1 and its layers, sets `self.downsample` (built with
    `normalize=False`; None for the plain twin) and defines `branch_from_pre`.
    """

    downsample: nn.Module | None

    @property
    def residual(self) -> bool:
        return self.downsample is not None

    def branch_from_pre(self, pre: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch_from_pre(self.act1(self.bn1(x)))

    def shortcut(self, x: torch.Tensor, pre: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(self.downsample, nn.Identity):
            return x
        return self.downsample(self.act1(self.bn1(x)) if pre is None else pre)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.act1(self.bn1(x))  # computed once: the branch and a projection both read it
        if not self.residual:
            return self.branch_from_pre(pre)
        return self.branch_from_pre(pre) + self.shortcut(x, pre)

    def forward_without_branch(self, x: torch.Tensor) -> torch.Tensor:
        """`forward` with F(x) = 0: the shortcut alone (nothing follows the addition)."""
        return without_branch(self, x, None)


class PreActBasicUnit(PreActUnit):
    """Pre-activation basic unit: `out = conv2(act2(bn2(conv1(act1(bn1(x)))))) + shortcut`."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1, *, shortcut: str = "A"):
        super().__init__()
        out_channels = channels * self.expansion
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.act1 = nn.ReLU(inplace=False)  # its input is also the shortcut's input
        self.conv1 = conv3x3(in_channels, channels, stride)
        self.bn2 = nn.BatchNorm2d(channels)
        self.act2 = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(channels, out_channels)
        self.downsample = make_shortcut(shortcut, in_channels, out_channels, stride, normalize=False)
        self.stride = stride
        self.changes_shape = stride != 1 or in_channels != out_channels

    def branch_from_pre(self, pre: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act2(self.bn2(self.conv1(pre))))

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv2.weight)



class PreActBottleneckUnit(PreActUnit):
    """Pre-activation bottleneck unit (He et al. 2016): BN-ReLU-1x1, BN-ReLU-3x3, BN-ReLU-1x1."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1, *, shortcut: str = "B",
                 bottleneck_stride: str = "1x1"):
        super().__init__()
        out_channels = channels * self.expansion
        stride_1x1, stride_3x3 = _bottleneck_strides(stride, bottleneck_stride)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.act1 = nn.ReLU(inplace=False)
        self.conv1 = conv1x1(in_channels, channels, stride_1x1)
        self.bn2 = nn.BatchNorm2d(channels)
        self.act2 = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(channels, channels, stride_3x3)
        self.bn3 = nn.BatchNorm2d(channels)
        self.act3 = nn.ReLU(inplace=True)
        self.conv3 = conv1x1(channels, out_channels)
        self.downsample = make_shortcut(shortcut, in_channels, out_channels, stride, normalize=False)
        self.stride = stride
        self.changes_shape = stride != 1 or in_channels != out_channels

    def branch_from_pre(self, pre: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.act2(self.bn2(self.conv1(pre))))
        return self.conv3(self.act3(self.bn3(out)))

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv3.weight)



def _bottleneck_strides(stride: int, placement: str) -> tuple[int, int]:
    """(stride of the first 1x1, stride of the 3x3) for "1x1" (v1) or "3x3" (v1.5)."""
    check_choice("bottleneck_stride", placement, BOTTLENECK_STRIDES)
    return (stride, 1) if placement == "1x1" else (1, stride)


def without_branch(unit: nn.Module, x: torch.Tensor, after_addition: nn.Module | None) -> torch.Tensor:
    """What a unit computes with its branch deleted, as in Veit et al.'s lesion study (2016).

    A residual unit keeps its shortcut and whatever follows the addition: exactly `forward`
    with F(x) = 0. A plain unit has no shortcut; deleting it means passing x on unchanged,
    which is only possible where the unit keeps the shape (`changes_shape` False).
    """
    if unit.downsample is None:
        if unit.changes_shape:
            raise ValueError("a plain unit that changes shape cannot be removed: nothing carries "
                             "its input to the next unit's shape")
        return x
    skip = unit.shortcut(x)
    if after_addition is None:
        return skip
    # The activation may work in place; an identity shortcut hands back x itself.
    return after_addition(skip.clone() if skip is x else skip)


UNITS = {
    ("basic", False): BasicUnit,
    ("bottleneck", False): BottleneckUnit,
    ("basic", True): PreActBasicUnit,
    ("bottleneck", True): PreActBottleneckUnit,
}
