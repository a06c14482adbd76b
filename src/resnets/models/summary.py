"""Per-stage shapes, parameters and multiply-add FLOPs, laid out like the paper's Table 1.

FLOPs are counted by running the model under `torch.utils.flop_counter.FlopCounterMode`, on the
meta device (shapes only, no arithmetic), never by a hand formula. The counter reports FLOPs
(2 per multiply-add) of convolutions and matrix products; the paper's "FLOPs" are
multiply-adds, so `macs = flops / 2`. BN, ReLU, pooling and additions are not counted (the
paper does not count them either).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from resnets.errors import UserError
from resnets.modes import eval_mode
from resnets.models.resnet import ResNet
from resnets.models.zoo import get_entry


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-adds of one forward pass on one input of shape (C, H, W)."""
    return _profile(model, input_shape)[0]


def _profile(model: nn.Module, input_shape: Sequence[int]):
    """(total MACs, MACs by module name, output shape by module name) for one (C, H, W) input."""
    device = next(model.parameters()).device
    x = torch.zeros(1, *input_shape, device=device)
    shapes: dict[str, tuple] = {}
    names = {module: name for name, module in model.named_modules()}
    hooks = [
        module.register_forward_hook(
            lambda module, args, out: shapes.__setitem__(names[module], tuple(out.shape))
        )
        for module in model.modules()
    ]
    try:
        with eval_mode(model), FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    root = type(model).__name__
    by_module = {}
    for key, ops in counter.get_flop_counts().items():
        name = "" if key in ("Global", root) else key.removeprefix(root + ".")
        by_module[name] = sum(ops.values()) // 2
    return counter.get_total_flops() // 2, by_module, shapes



def activation_bytes(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Bytes of the layer outputs one (C, H, W) input leaves for the backward pass (every leaf
    module's output in fp32; an upper bound, since in-place ReLUs share theirs), measured by a
    forward pass of an empty batch (`_output_bytes`): nothing is computed. Pass a model built
    for counting (`with torch.device("meta")`): it is given uninitialised CPU weights."""
    return sum(_output_bytes(model, input_shape))


def _largest_output_bytes(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Bytes of the largest layer output one (C, H, W) input gives (fp32), by a forward pass
    of an empty batch (pass a model built on the meta device, as for `activation_bytes`)."""
    return max(_output_bytes(model, input_shape), default=0)


def _output_bytes(model: nn.Module, input_shape: Sequence[int]) -> list[int]:
    """The fp32 bytes of each leaf module's output for one (C, H, W) input: the model, given
    uninitialised CPU weights (`_give_cpu_memory`: the parameters' memory, no initialisation),
    runs a batch of no images, whose outputs have every layer's shape and hold nothing, so any
    image size costs nothing. Not the meta device: its operators are Python decompositions that
    import TorchDynamo, about 1 s of every command's start-up on a 2-core CPU (issue #24)."""
    sizes: list[int] = []

    def count(module, args, out):
        if isinstance(out, torch.Tensor):
            sizes.append(_numel(out.shape[1:]) * 4)

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        with eval_mode(model), torch.no_grad():
            _give_cpu_memory(model)(torch.zeros(0, *input_shape))
    finally:
        for hook in hooks:
            hook.remove()
    return sizes


def _give_cpu_memory(model: nn.Module) -> nn.Module:
    """`model` with an uninitialised CPU tensor of each meta parameter's and buffer's shape and
    dtype in its place (what `model.to_empty(device="cpu")` does, without going through
    `empty_like` of a meta tensor: that Python reference imports SymPy, about 0.3 s of every
    training command's start-up)."""
    for module in model.modules():
        for table in (module._parameters, module._buffers):
            for name, tensor in table.items():
                if tensor is not None and tensor.is_meta:
                    empty = torch.empty(tuple(tensor.shape), dtype=tensor.dtype)
                    table[name] = (nn.Parameter(empty, tensor.requires_grad)
                                   if isinstance(tensor, nn.Parameter) else empty)
    return model


def training_bytes(model: nn.Module, input_shape: Sequence[int], batch: int) -> int:
    """About how much memory training `model` on batches of `batch` (C, H, W) inputs takes:
    parameters with their gradient and optimizer state, and every layer output the backward
    pass keeps. `model` is given uninitialised CPU weights: pass one built on the meta device."""
    from resnets.models.resnet import TRAINING_BYTES_PER_PARAMETER

    return (count_parameters(model) * TRAINING_BYTES_PER_PARAMETER
            + activation_bytes(model, input_shape) * batch)


def inference_bytes(model: nn.Module, input_shape: Sequence[int], batch: int) -> int:
    """About how much memory inference of `model` on `batch` (C, H, W) inputs takes: the fp32
    weights twice (the model and its folded copy), the input batch as uint8 and fp32, and per
    input twice the largest layer output (a layer's input and output are alive at once; the
    largest is the stem's, before any shortcut; nothing is kept for a backward pass). `model`
    is given uninitialised CPU weights: pass one built on the meta device."""
    per_input = (1 + 4) * _numel(input_shape) + 2 * _largest_output_bytes(model, input_shape)
    return count_parameters(model) * 4 * 2 + per_input * batch


def _numel(shape: Sequence[int]) -> int:
    total = 1
    for size in shape:
        total *= int(size)
    return total


def _parse_input_size(input_size, default: tuple[int, int, int], in_channels: int) -> tuple[int, int, int]:
    if input_size is None:
        return (in_channels, *default[1:])
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    size = tuple(int(v) for v in input_size)
    if len(size) == 2:
        size = (in_channels, *size)
    if len(size) != 3 or min(size) < 1:
        raise UserError(f"input size must be H W or C H W with positive values, got {input_size!r}")
    return size


def _unit_layout(model: ResNet, stage_index: int) -> str:
    """Table 1's bracket for one stage: '[3x3, 64 | 3x3, 64] x 3'."""
    width = model.stages[stage_index][0].conv1.out_channels
    if model.unit_kind == "basic":
        inner = f"3x3, {width} | 3x3, {width}"
    else:
        inner = f"1x1, {width} | 3x3, {width} | 1x1, {width * 4}"
    return f"[{inner}] x {model.stage_depths[stage_index]}"


def model_info(name: str, *, input_size=None, **kwargs) -> dict:
    """Parameters, multiply-add FLOPs, per-stage layout and the paper's error for a named model.

    `input_size`: None for the paper's (3x32x32 CIFAR, 3x224x224 ImageNet), an int, (H, W) or
    (C, H, W). Keyword arguments go to the builder (e.g. num_classes, shortcut).
    """
    entry = get_entry(name)
    if input_size is not None and not isinstance(input_size, int) and len(input_size) == 3:
        kwargs.setdefault("in_channels", int(input_size[0]))
    with torch.device("meta"):
        model = entry.build(**kwargs)
    size = _parse_input_size(input_size, entry.input_size, model.in_channels)
    if size[0] != model.in_channels:
        raise UserError(f"{name} takes {model.in_channels} input channels, input size gives {size[0]}")
    try:
        total, by_module, shapes = _profile(model, size)
    except RuntimeError as error:
        raise UserError(f"input size {size} is too small for {name}: {error}".splitlines()[0]) from None

    rows = _stage_rows(model, by_module, shapes)
    return {
        "name": name,
        "family": model.family,
        "unit": model.unit_kind,
        "shortcut": model.shortcut,
        "preact": model.preact,
        "depth": model.depth,
        "input_size": list(size),
        "params": count_parameters(model),
        "macs": total,
        "paper_error": entry.paper_error,
        "paper_source": entry.paper_source,
        "stages": rows,
    }


def _stage_rows(model: ResNet, by_module: dict, shapes: dict) -> list[dict]:
    """Table 1's rows: the stem, each stage, the head, with output size, layout, params, MACs."""

    def params_of(*prefixes: str) -> int:
        return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefixes))

    stem_out = shapes["maxpool"] if model.family == "imagenet" else shapes["conv1"]
    stem_layout = f"{model.conv1.kernel_size[0]}x{model.conv1.kernel_size[0]}, {model.conv1.out_channels}"
    if model.conv1.stride[0] > 1:
        stem_layout += f", stride {model.conv1.stride[0]}"
    if model.family == "imagenet":
        stem_layout += "; 3x3 max pool, stride 2"
    rows = [{"stage": "conv1", "output": list(stem_out[1:]), "layout": stem_layout,
             "params": params_of("conv1.", "bn1."), "macs": by_module.get("conv1", 0)}]
    for index in range(len(model.stage_depths)):
        layer = f"layer{index + 1}"
        rows.append({"stage": layer, "output": list(shapes[layer][1:]),
                     "layout": _unit_layout(model, index), "params": params_of(layer + "."),
                     "macs": by_module.get(layer, 0)})
    rows.append({"stage": "head", "output": [model.num_classes],
                 "layout": f"average pool, {model.num_classes}-d fc",
                 "params": params_of("fc.", "bn_final."), "macs": by_module.get("fc", 0)})
    return rows


def human(value: float) -> str:
    """1234567 -> '1.23M' (FLOPs and counts)."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return str(int(value))


def format_info(info: dict) -> str:
    """The Table 1 layout as text: one row per stage, then totals."""
    c, h, w = info["input_size"]
    kind = "pre-activation " if info["preact"] else ""
    lines = [
        f"{info['name']}: {info['depth']} layers, {kind}{info['unit']} units, shortcut {info['shortcut']}, "
        f"input {c}x{h}x{w}",
        "",
        f"{'stage':<8} {'output':>10}  {'layout':<44} {'params':>12} {'mult-adds':>10}",
    ]
    for row in info["stages"]:
        output = "x".join(map(str, row["output"][1:])) if len(row["output"]) == 3 else f"{row['output'][0]}-d"
        lines.append(
            f"{row['stage']:<8} {output:>10}  {row['layout']:<44} {row['params']:>12,} {human(row['macs']):>10}"
        )
    lines.append(f"{'total':<8} {'':>10}  {'':<44} {info['params']:>12,} {human(info['macs']):>10}")
    if info["paper_error"] is not None:
        lines.append(f"paper: {info['paper_error']}% error ({info['paper_source']})")
    return "\n".join(lines)

