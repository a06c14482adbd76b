"""The one generic network behind both families of the paper.

CIFAR family (section 4.2): 3x3 conv stem with 16 channels, three stages of n units at
16/32/64 channels (maps 32/16/8 on CIFAR), global average pool, fc. Depth 6n+2.
ImageNet family (Table 1): 7x7/2 conv stem with 64 channels, 3x3/2 max pool, four stages at
64/128/256/512 channels (x4 for bottleneck units), global average pool, fc.

Parameter names are torchvision's: `conv1 bn1 layer1..layerN fc`. Pre-activation networks add
`bn_final` after the last stage (the units leave their output un-normalized).
"""

from __future__ import annotations

import os
from typing import Sequence

import torch
from torch import nn

from resnets.errors import UserError
from resnets.models.blocks import BOTTLENECK_STRIDES, SHORTCUTS, UNITS, check_choice

FAMILIES = ("cifar", "imagenet")
UNIT_KINDS = ("basic", "bottleneck")
MAX_UNITS = 10_000  # resnet1202 has 600; each unit is a dozen Python modules, built one by one
TRAINING_BYTES_PER_PARAMETER = 16  # fp32 weight, gradient, momentum, and room for a copy


class ResNet(nn.Module):
    """A residual network (or its plain twin, with `shortcut="none"`) of either family.

    Args:
        family: "cifar" (3x3 stem, no max pool) or "imagenet" (7x7/2 stem + 3x3/2 max pool).
        unit: "basic" (two 3x3 convs) or "bottleneck" (1x1, 3x3, 1x1 with expansion 4).
        stage_depths: units per stage, e.g. (3, 3, 3) for ResNet-20, (3, 4, 6, 3) for ResNet-34.
        width: channels of the stem and the first stage; stage i has width * 2**i
            (times the unit's expansion at its output).
        shortcut: "A" zero-pad, "B" project where the shape changes, "C" project everywhere,
            "none" for the plain twin.
        preact: pre-activation units (He et al. 2016) instead of the paper's post-activation.
        num_classes: outputs of the fc layer.
        in_channels: input image channels (1 for grayscale).
        zero_init_last: zero the last BN scale (or conv, pre-activation) of every residual unit's
            branch, so each starts as the identity. Plain units are left alone: zeroing them
            would cut the signal.
        bottleneck_stride: "1x1" (the paper, v1) or "3x3" (torchvision, v1.5).
    """

    def __init__(
        self,
        *,
        family: str,
        unit: str,
        stage_depths: Sequence[int],
        width: int,
        shortcut: str,
        preact: bool = False,
        num_classes: int = 10,
        in_channels: int = 3,
        zero_init_last: bool = False,
        bottleneck_stride: str = "1x1",
    ):
        super().__init__()
        check_choice("family", family, FAMILIES)
        check_choice("unit", unit, UNIT_KINDS)
        check_choice("shortcut", shortcut, SHORTCUTS)
        check_choice("bottleneck_stride", bottleneck_stride, BOTTLENECK_STRIDES)
        for name, value in (("num_classes", num_classes), ("in_channels", in_channels), ("width", width)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"{name} must be a positive integer, got {value!r}")
        if not stage_depths or any(int(d) < 1 for d in stage_depths):
            raise UserError(f"every stage needs at least one unit, got {list(stage_depths)}")
        check_size(unit, stage_depths, width, in_channels, num_classes)
        self.family, self.unit_kind, self.shortcut, self.preact = family, unit, shortcut, preact
        self.stage_depths = tuple(int(d) for d in stage_depths)
        self.num_classes, self.in_channels = num_classes, in_channels
        unit_class = UNITS[(unit, preact)]
        # Only bottleneck units have a stride placement to choose.
        unit_options = {"shortcut": shortcut}
        if unit == "bottleneck":
            unit_options["bottleneck_stride"] = bottleneck_stride

        self._make_stem(in_channels, width)

        in_width = width
        for index, depth in enumerate(self.stage_depths):
            channels = width * 2**index
            stride = 1 if index == 0 else 2
            units = []
            for position in range(depth):
                units.append(unit_class(in_width, channels, stride if position == 0 else 1, **unit_options))
                in_width = channels * unit_class.expansion
            self.add_module(f"layer{index + 1}", nn.Sequential(*units))
        self.num_features = in_width
        if preact:
            self.bn_final = nn.BatchNorm2d(in_width)
            self.act_final = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_width, num_classes)

        self._init_weights()
        if zero_init_last:
            self.zero_init_last()

    def _make_stem(self, in_channels: int, width: int) -> None:
        """conv1 bn1 act1 maxpool: 7x7/2 conv + 3x3/2 max pool (ImageNet) or a 3x3 conv (CIFAR)."""
        if self.family == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        # A pre-activation network leaves the stem un-normalized when its first unit normalizes
        # its own input (CIFAR, as in He et al. 2016); the ImageNet stem keeps BN-ReLU before
        # its max pool.
        stem_bn = not (self.preact and self.family == "cifar")
        self.bn1 = nn.BatchNorm2d(width) if stem_bn else nn.Identity()
        self.act1 = nn.ReLU(inplace=True) if stem_bn else nn.Identity()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if self.family == "imagenet" else nn.Identity()

    def _init_weights(self) -> None:
        """He initialisation (fan-out, as for ReLU); BN scale 1, shift 0; fc keeps torch's default.
        Nothing to draw for a model built on the meta device (shapes only, for counting and
        memory estimates): torch's meta `normal_` would start TorchDynamo, 2 s at start-up."""
        if self.conv1.weight.is_meta:
            return
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def zero_init_last(self) -> None:
        """Call `zero_init_last()` on every residual unit (plain units are skipped)."""
        for unit in self.units:
            if unit.residual:
                unit.zero_init_last()

    @property
    def stages(self) -> list[nn.Sequential]:
        """The stages in order (`layer1`, `layer2`, ...)."""
        return [getattr(self, f"layer{i + 1}") for i in range(len(self.stage_depths))]

    @property
    def units(self) -> list[nn.Module]:
        """Every residual (or plain) unit, in order."""
        return [unit for stage in self.stages for unit in stage]

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.act1(self.bn1(self.conv1(x))))

    def forward_features(self, x: torch.Tensor, *, return_stages: bool = False):
        """Image batch (B, C, H, W) -> feature map (B, num_features, h, w) before pooling.

        With `return_stages=True` returns `(features, [stem, stage1, ..., stageN outputs])`.
        """
        x = self.forward_stem(x)
        outputs = [x]
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        if self.preact:
            x = self.act_final(self.bn_final(x))
        return (x, outputs) if return_stages else x

    def forward_head(self, features: torch.Tensor, *, pre_logits: bool = False) -> torch.Tensor:
        """Feature map (B, C, h, w) -> logits (B, num_classes), or the pooled (B, C) vector."""
        pooled = torch.flatten(self.avgpool(features), 1)
        return pooled if pre_logits else self.fc(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @property
    def depth(self) -> int:
        """Weighted layers: the stem conv, every conv of every branch, and fc (the paper's count)."""
        convs_per_unit = 2 if self.unit_kind == "basic" else 3
        return 1 + convs_per_unit * sum(self.stage_depths) + 1


def estimate_parameters(unit: str, stage_depths: Sequence[int], width: int, in_channels: int,
                        num_classes: int) -> int:
    """About how many parameters a network of this layout has, without building it: the
    3x3 (and 1x1) convolutions of every unit, the stem and the fc layer (BN and projection
    shortcuts are a few percent on top)."""
    expansion = 4 if unit == "bottleneck" else 1
    total = in_channels * width * 49  # the larger (7x7) stem
    in_width = width
    for index, depth in enumerate(stage_depths):
        channels = width * 2**index
        out = channels * expansion
        per_unit = (9 * channels * channels * 2 if unit == "basic"
                    else out * channels * 2 + 9 * channels * channels)
        total += int(depth) * per_unit + (in_width * channels if unit == "bottleneck" else 0)
        in_width = out
    return total + in_width * num_classes


def memory_bytes() -> int | None:
    """This machine's physical memory, where the platform says (None elsewhere)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_size(unit: str, stage_depths: Sequence[int], width: int, in_channels: int,
               num_classes: int) -> None:
    """Refuse, before anything is allocated, a network that cannot be built or trained here:
    more than MAX_UNITS units, or parameters whose training state alone exceeds memory."""
    units = sum(int(d) for d in stage_depths)
    if units > MAX_UNITS:
        raise UserError(f"{units:,} residual units is more than this toolkit builds "
                        f"({MAX_UNITS:,}, a CIFAR depth of {6 * MAX_UNITS // 3 + 2:,}); "
                        f"choose a smaller depth")
    parameters = estimate_parameters(unit, stage_depths, width, in_channels, num_classes)
    need, have = parameters * TRAINING_BYTES_PER_PARAMETER, memory_bytes()
    if have is not None and need > have:
        raise UserError(f"this network has about {parameters:,} parameters: training them needs "
                        f"about {need / 2**30:,.0f} GiB, more than this machine's "
                        f"{have / 2**30:,.0f} GiB; choose a smaller depth or width")
