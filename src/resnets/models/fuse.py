"""Convolution, bias, residual addition and ReLU in one oneDNN call, for CPU inference.

After BatchNorm is folded (`resnets.models.fold`), an eval-mode post-activation unit is
`relu(conv2(relu(conv1(x))) + shortcut(x))` (three convolutions for a bottleneck). Run as
PyTorch modules that is a convolution, then a separate pass over the output for each ReLU and
for the addition, each pass reading and writing a whole activation map. oneDNN, the library
behind PyTorch's CPU convolutions, can apply the ReLU, and add another tensor, to each output
value while the convolution writes it (its "post-ops"); PyTorch exposes that as
`torch.ops.mkldnn._convolution_pointwise` (what TorchInductor's CPU backend calls). This module
puts those calls in place of the separate passes:

- `fuse_for_cpu(folded)` replaces, in a folded ResNet, the stem's conv+ReLU and every
  post-activation unit whose activations are ReLUs with `FusedConv` calls (conv+ReLU inside the
  branch; conv+add+ReLU at the unit's end, conv+ReLU in a plain unit); pre-activation units and
  anything else stay as they are;
- `fusion_available(dtype)`: whether this PyTorch build has the operators (CPU builds with
  oneDNN) for the model's dtype (bf16 needs AVX-512 or AVX-NE-CONVERT); without them
  `fuse_for_cpu` returns the model unchanged.

The arithmetic is the unfused model's: the same convolution in fp32 (or bf16) with the ReLU and
the addition applied to its fp32 result, so each fused call is within fp32's worst-case
rounding (in any summation order) of its exact value, and logits agree with the folded model to
fp32 rounding as the network amplifies it (tests/models/test_fold.py, every registered CIFAR
model and resnet18/50; the bound: tests/fp32_rounding.py). oneDNN picks the kernel per CPU
(fp32 brgemm for these calls on AVX2 and AVX-512 alike, the model's own convolutions fp32 jit
ones, summing in another order); it never uses bf16 for fp32 tensors unless an fpmath mode
asks it to (ONEDNN_DEFAULT_FPMATH_MODE, torch.backends.mkldnn's fp32_precision). Measured:
benchmarks/bench_inference.py. For inference only, like the folded copy it is made from: the
fused modules hold the weights as buffers, and nothing here is trained or checkpointed.

A deliberate exception to STYLE's "separate activation modules, visible additions" (which
exist for hooks and diagnostics): a fused unit has neither, its ReLUs and addition being inside
the oneDNN call. Hook the model itself (`Trained.model`), never the inference copy.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch import nn

def fusion_available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether this PyTorch has oneDNN's fused convolution operators (CPU builds with oneDNN)
    for `dtype`: fp32 always; bf16 only on a CPU whose bf16 kernels they have (AVX-512 BW/VL/DQ
    or AVX-NE-CONVERT: elsewhere they refuse bf16, where the unfused convolution emulates it)."""
    if dtype not in (torch.float32, torch.bfloat16) or not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.mkldnn._convolution_pointwise.binary  # noqa: B018 (looked up, not called)
        return dtype == torch.float32 or bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def fusable_conv(conv: nn.Module) -> bool:
    """A plain 2-D convolution with numeric zero padding (what the fused operator computes)."""
    return (type(conv) is nn.Conv2d and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str))


class FusedConv(nn.Module):
    """`conv(x)`, then `+ other` when given, then ReLU when `relu`, in one oneDNN call on the
    CPU (elsewhere: the same three steps with torch's own operators). Made from a plain
    `nn.Conv2d`, in the dtype it will run in (a zero bias where it had none).

    The weights are copied into the blocked layout oneDNN picks for an input's shape and memory
    format, once per shape (the last `PACKED_SHAPES` kept; made again when the weights change
    in place or the module is moved or cast). Handed over plainly they would be reordered at
    every call (20% of a call at batch 1), and a copy made for another shape can need a slow
    reorder too (1.9 ms a call for a 64-channel layer at batch 64); both measured with
    ONEDNN_VERBOSE on resnet20, 2-core AVX2 EPYC, 2026-12-02. The packed copies are not part
    of the module's state: a copy or pickle of it leaves them behind."""

    PACKED_SHAPES = 4

    def __init__(self, conv: nn.Conv2d, *, relu: bool):
        super().__init__()
        if not fusable_conv(conv):
            raise ValueError(f"cannot fuse {conv}: a plain Conv2d with zero padding is needed")
        self.register_buffer("weight", conv.weight.detach().clone())
        bias = conv.bias.detach().clone() if conv.bias is not None \
            else torch.zeros(conv.out_channels, dtype=conv.weight.dtype,
                             device=conv.weight.device)
        self.register_buffer("bias", bias)
        self.padding, self.stride = list(conv.padding), list(conv.stride)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.relu = relu
        self._packed: dict[tuple, torch.Tensor] = {}
        self._lock = threading.Lock()  # one model may serve several threads

    def packed(self, x: torch.Tensor) -> torch.Tensor:
        """The weights in oneDNN's layout for inputs like `x`."""
        key = (tuple(x.shape), x.is_contiguous(memory_format=torch.channels_last),
               self.weight._version)
        with self._lock:
            weight = self._packed.get(key)
            if weight is None:
                weight = torch.ops.mkldnn._reorder_convolution_weight(
                    self.weight.contiguous(), self.padding, self.stride, self.dilation,
                    self.groups, list(x.shape))
                while len(self._packed) >= self.PACKED_SHAPES:
                    self._packed.pop(next(iter(self._packed)))
                self._packed[key] = weight
        return weight

    def _apply(self, fn, recurse=True):  # .to(), .float(), ...: the layouts are made again
        self._packed = {}
        return super()._apply(fn, recurse)

    def __getstate__(self):  # copy.deepcopy, pickle: without the packed copies and the lock
        return {k: v for k, v in self.__dict__.items() if k not in ("_packed", "_lock")}

    def __setstate__(self, state):
        super().__setstate__(state)
        self._packed, self._lock = {}, threading.Lock()

    def forward(self, x: torch.Tensor, other: torch.Tensor | None = None) -> torch.Tensor:
        if x.device.type != "cpu":  # moved off the CPU after fusing: torch's own operators
            out = F.conv2d(x, self.weight, self.bias, self.stride, self.padding,
                           self.dilation, self.groups)
            out = out if other is None else out + other
            return F.relu(out) if self.relu else out
        ops, weight = torch.ops.mkldnn, self.packed(x)
        if other is None:
            return ops._convolution_pointwise(
                x, weight, self.bias, self.padding, self.stride, self.dilation,
                self.groups, "relu" if self.relu else "none", [], None)
        return ops._convolution_pointwise.binary(
            x, other, weight, self.bias, self.padding, self.stride, self.dilation,
            self.groups, "add", 1.0, "relu" if self.relu else None, [], None)

    def extra_repr(self) -> str:
        out_channels, in_channels, *kernel = self.weight.shape
        return (f"{in_channels * self.groups}, {out_channels}, kernel_size={tuple(kernel)}, "
                f"stride={tuple(self.stride)}, padding={tuple(self.padding)}, relu={self.relu}")


class FusedUnit(nn.Module):
    """A folded post-activation unit as fused calls: every convolution but the last with its
    ReLU; the last with the shortcut's output added and the ReLU after the addition (a plain
    unit: the ReLU only). The shortcut module is the unit's own (identity, zero padding, or a
    folded projection)."""

    def __init__(self, unit: nn.Module):
        super().__init__()
        convs = [unit.conv1, unit.conv2] + ([unit.conv3] if hasattr(unit, "conv3") else [])
        self.convs = nn.ModuleList(FusedConv(conv, relu=True) for conv in convs)
        self.downsample = unit.downsample
        projection = unit.downsample
        if isinstance(projection, nn.Sequential) and len(projection) == 2 \
                and fusable_conv(projection[0]) and type(projection[1]) is nn.Identity:
            self.downsample = FusedConv(projection[0], relu=False)  # a folded projection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for conv in self.convs[:-1]:
            out = conv(out)
        if self.downsample is None:
            return self.convs[-1](out)
        return self.convs[-1](out, self.downsample(x))


def _unit_fusable(unit: nn.Module) -> bool:
    from resnets.models.blocks import PostActUnit

    if not isinstance(unit, PostActUnit):
        return False
    names = ["1", "2"] + (["3"] if hasattr(unit, "conv3") else [])
    return all(fusable_conv(getattr(unit, f"conv{n}")) and type(getattr(unit, f"bn{n}"))
               is nn.Identity and type(getattr(unit, f"act{n}")) is nn.ReLU for n in names)


def fuse_for_cpu(model: nn.Module) -> nn.Module:
    """`model` (a folded copy: `fold_batchnorm`) with its stem and post-activation units run as
    fused oneDNN calls, changed in place and returned; unchanged where the model is not a
    folded ResNet on the CPU or the operators are missing for its dtype (`fusion_available`)."""
    from resnets.models.fold import is_folded
    from resnets.models.resnet import ResNet

    if not (isinstance(model, ResNet) and is_folded(model)
            and model.conv1.weight.device.type == "cpu"
            and fusion_available(model.conv1.weight.dtype)):
        return model
    if fusable_conv(model.conv1) and type(model.bn1) is nn.Identity \
            and type(model.act1) is nn.ReLU:
        model.conv1, model.act1 = FusedConv(model.conv1, relu=True), nn.Identity()
    for stage in model.stages:
        for index, unit in enumerate(stage):
            if _unit_fusable(unit):
                stage[index] = FusedUnit(unit)
    return model


def is_fused(model: nn.Module) -> bool:
    """Whether `fuse_for_cpu` fused anything in `model`."""
    return any(isinstance(m, FusedConv) for m in model.modules())


def describe_fusion(model: nn.Module) -> str:
    """What `fuse_for_cpu` fused in `model`, for a report line: "conv+add+ReLU fused" where a
    unit's addition is inside a call, "conv+ReLU fused" where only ReLUs are (plain networks, a
    pre-activation network's stem), "" where nothing is."""
    units = [m for m in model.modules() if isinstance(m, FusedUnit)]
    if any(unit.downsample is not None for unit in units):
        return "conv+add+ReLU fused"
    return "conv+ReLU fused" if is_fused(model) else ""
