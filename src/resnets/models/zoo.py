"""Named models: typed keyword-only builders, a registry and `list_models` (`create_model`,
which can also start from trained weights, is in `resnets.models.create`).

This module is the only place a model name means something. Every registered name maps to a
builder and the keyword arguments it fixes (`resnet56` is `cifar_resnet(depth=56)`), and
KIND+DEPTH names resolve for any valid depth: `resnetN`, `plainN`, `preact_resnetN` are the
ImageNet networks of Table 1 for N in 18, 34, 50, 101, 152 and the CIFAR networks of
section 4.2 for any other N = 6n+2 (`plain74`, `resnet8`). `describe(name)` says what a name
is (family, kind, depth). Metadata from the paper (its reported error and where) sits beside
each entry as data; `resnets.model_info` adds the measured parameters and FLOPs.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
import typing
from dataclasses import dataclass, field
from typing import Callable


from resnets.errors import UserError
from resnets.models.resnet import ResNet

# Table 1 of the paper: units per stage for each ImageNet depth, and the unit kind.
IMAGENET_STAGES = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)  # the depths of the paper's Table 6
KINDS = ("resnet", "plain", "preact_resnet")  # the prefixes of KIND+DEPTH names
FAMILIES = ("cifar", "imagenet")


def cifar_units_per_stage(depth: object) -> int:
    """n for a CIFAR depth 6n+2, or a UserError naming the two nearest valid depths."""
    if isinstance(depth, bool) or not isinstance(depth, int):
        raise UserError(f"depth must be an integer of the form 6n+2 (20, 32, 44, 56, 110, ...), got {depth!r}")
    if depth >= 8 and (depth - 2) % 6 == 0:
        return (depth - 2) // 6
    if depth < 8:
        lower, upper = 8, 14
    else:
        lower = depth - (depth - 2) % 6
        upper = lower + 6
    raise UserError(
        f"CIFAR depth must be 6n+2 with n >= 1 (8, 14, 20, ...); {depth} is not: "
        f"the nearest valid depths are {lower} and {upper}"
    )


def cifar_resnet(
    *,
    depth: int = 20,
    num_classes: int = 10,
    in_channels: int = 3,
    width: int = 16,
    shortcut: str = "A",
    preact: bool = False,
    zero_init_last: bool = False,
) -> ResNet:
    """CIFAR ResNet of section 4.2: depth 6n+2, n basic units in each of three stages."""
    n = cifar_units_per_stage(depth)
    return ResNet(
        family="cifar",
        unit="basic",
        stage_depths=(n, n, n),
        width=width,
        shortcut=shortcut,
        preact=preact,
        num_classes=num_classes,
        in_channels=in_channels,
        zero_init_last=zero_init_last,
    )


def cifar_plain(
    *,
    depth: int = 20,
    num_classes: int = 10,
    in_channels: int = 3,
    width: int = 16,
    zero_init_last: bool = False,
) -> ResNet:
    """The plain twin of `cifar_resnet`: the same layers and names, no shortcut additions.

    `zero_init_last` is accepted so one recipe serves both twins; plain units ignore it.
    """
    return cifar_resnet(
        depth=depth,
        num_classes=num_classes,
        in_channels=in_channels,
        width=width,
        shortcut="none",
        zero_init_last=zero_init_last,
    )


def imagenet_resnet(
    *,
    depth: int = 18,
    num_classes: int = 1000,
    in_channels: int = 3,
    width: int = 64,
    shortcut: str = "B",
    preact: bool = False,
    zero_init_last: bool = False,
    bottleneck_stride: str = "1x1",
) -> ResNet:
    """ImageNet ResNet of Table 1 (depth 18, 34, 50, 101 or 152).

    `bottleneck_stride="1x1"` is the paper's stride placement (v1); torchvision's weights were
    trained with `"3x3"` (v1.5): use that to reproduce their outputs.
    """
    if depth not in IMAGENET_STAGES:
        raise UserError(
            f"ImageNet depth must be one of {', '.join(map(str, IMAGENET_STAGES))}, got {depth!r}"
        )
    unit, stages = IMAGENET_STAGES[depth]
    return ResNet(
        family="imagenet",
        unit=unit,
        stage_depths=stages,
        width=width,
        shortcut=shortcut,
        preact=preact,
        num_classes=num_classes,
        in_channels=in_channels,
        zero_init_last=zero_init_last,
        bottleneck_stride=bottleneck_stride,
    )


def imagenet_plain(
    *,
    depth: int = 18,
    num_classes: int = 1000,
    in_channels: int = 3,
    width: int = 64,
    zero_init_last: bool = False,
    bottleneck_stride: str = "1x1",
) -> ResNet:
    """The plain twin of `imagenet_resnet` (plain units ignore `zero_init_last`)."""
    return imagenet_resnet(
        depth=depth,
        num_classes=num_classes,
        in_channels=in_channels,
        width=width,
        shortcut="none",
        zero_init_last=zero_init_last,
        bottleneck_stride=bottleneck_stride,
    )


@dataclass(frozen=True)
class ModelEntry:
    """One registered name: its builder, the arguments the name fixes, and paper metadata."""

    name: str
    builder: Callable[..., ResNet]
    fixed: dict = field(default_factory=dict)
    family: str = "cifar"
    kind: str = "resnet"  # one of KINDS
    input_size: tuple[int, int, int] = (3, 32, 32)  # (C, H, W) the paper used
    paper_error: float | None = None  # top-1 error (%) the paper reports for this model
    paper_source: str = ""  # where: table and protocol

    def build(self, **kwargs) -> ResNet:
        _check_types(self.name, self.builder, kwargs)
        for key, value in kwargs.items():
            if key in self.fixed and self.fixed[key] != value:
                raise UserError(
                    f"{self.name} fixes {key}={self.fixed[key]!r}; for {key}={value!r} use "
                    f"{self.builder.__name__}({key}=...)"
                )
        try:
            return self.builder(**{**self.fixed, **kwargs})
        except TypeError as error:  # an argument this builder does not take
            raise UserError(f"{self.name}: {error}") from None


def _check_types(name: str, builder: Callable, kwargs: dict) -> None:
    """A UserError naming the first keyword argument whose value is not of the type the
    builder declares (int or bool), before any of it reaches torch. Strings are choices, which
    the network checks against their lists."""
    words = {int: "an integer", bool: "true or false"}
    hints = typing.get_type_hints(builder)
    for key, value in kwargs.items():
        kind = hints.get(key)
        if kind in words and not (isinstance(value, kind) and (kind is bool or not isinstance(value, bool))):
            raise UserError(f"{name}: {key} must be {words[kind]}, got {value!r}")


_REGISTRY: dict[str, ModelEntry] = {}


def register(entry: ModelEntry) -> ModelEntry:
    if entry.name in _REGISTRY:
        raise ValueError(f"model {entry.name!r} is registered twice")
    _REGISTRY[entry.name] = entry
    return entry


# (family, kind) -> the generic builder and what it fixes; every named model is one of these
# at a fixed depth.
_GENERIC = {
    ("cifar", "resnet"): ("cifar_resnet", cifar_resnet, {}),
    ("cifar", "plain"): ("cifar_plain", cifar_plain, {}),
    ("cifar", "preact_resnet"): ("cifar_preact_resnet", cifar_resnet, {"preact": True}),
    ("imagenet", "resnet"): ("imagenet_resnet", imagenet_resnet, {}),
    ("imagenet", "plain"): ("imagenet_plain", imagenet_plain, {}),
    ("imagenet", "preact_resnet"): ("imagenet_preact_resnet", imagenet_resnet, {"preact": True}),
}
_INPUT_SIZES = {"cifar": (3, 32, 32), "imagenet": (3, 224, 224)}
# Table 6, CIFAR-10 test error (%); 110 is the best of 5 runs (mean 6.61 +- 0.16).
_CIFAR_ERRORS = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43, 1202: 7.93}
# ImageNet validation top-1 error (%), 10-crop testing: Table 2 (shortcut A for 18/34, plain
# nets) and Table 3 (ResNet-34 B, ResNet-50/101/152).
_IMAGENET_ERRORS = {
    "resnet18": (27.88, "Table 2, ImageNet val top-1, 10-crop, shortcut A"),
    "resnet34": (24.52, "Table 3, ImageNet val top-1, 10-crop, shortcut B"),
    "resnet50": (22.85, "Table 3, ImageNet val top-1, 10-crop"),
    "resnet101": (21.75, "Table 3, ImageNet val top-1, 10-crop"),
    "resnet152": (21.43, "Table 3, ImageNet val top-1, 10-crop"),
    "plain18": (27.94, "Table 2, ImageNet val top-1, 10-crop"),
    "plain34": (28.54, "Table 2, ImageNet val top-1, 10-crop"),
}


def generic_name(family: str, kind: str) -> str:
    """The registered name of the builder that takes any depth: ("cifar", "plain") ->
    "cifar_plain"."""
    return _GENERIC[(family, kind)][0]


def _depth_entry(kind: str, depth: int) -> ModelEntry:
    """KIND+DEPTH as an entry: ImageNet for the depths of Table 1, CIFAR for any other 6n+2."""
    family = "imagenet" if depth in IMAGENET_STAGES else "cifar"
    _, builder, fixed = _GENERIC[(family, kind)]
    name = f"{kind}{depth}"
    if family == "imagenet":
        error, source = _IMAGENET_ERRORS.get(name, (None, ""))
    else:
        cifar_units_per_stage(depth)  # a UserError naming the nearest valid depths
        error = _CIFAR_ERRORS.get(depth) if kind == "resnet" else None
        source = "Table 6, CIFAR-10 test error" if error is not None else ""
    return ModelEntry(name, builder, {"depth": depth, **fixed}, family=family, kind=kind,
                      input_size=_INPUT_SIZES[family], paper_error=error, paper_source=source)


def _register_all() -> None:
    for (family, kind), (name, builder, fixed) in _GENERIC.items():
        if name != "imagenet_preact_resnet":  # reachable as preact_resnet18 ... 152
            register(ModelEntry(name, builder, fixed, family=family, kind=kind,
                                input_size=_INPUT_SIZES[family]))
    for depth in CIFAR_DEPTHS:
        for kind in ("resnet", "plain", "preact_resnet"):
            register(_depth_entry(kind, depth))
    for depth in IMAGENET_STAGES:
        for kind in ("resnet", "plain", "preact_resnet"):
            register(_depth_entry(kind, depth))


_register_all()


_DEPTH_NAME = re.compile(r"(plain|resnet|preact_resnet)(\d+)")


def get_entry(name: str) -> ModelEntry:
    """The entry for `name` (registered, or KIND+DEPTH), or a UserError listing close names."""
    if isinstance(name, str) and name in _REGISTRY:
        return _REGISTRY[name]
    match = _DEPTH_NAME.fullmatch(name) if isinstance(name, str) else None
    if match is not None:
        kind, depth = match.group(1), int(match.group(2))
        try:
            return _depth_entry(kind, depth)
        except UserError as error:
            raise UserError(f"unknown model {name!r}: {kind}N takes an ImageNet depth "
                            f"({', '.join(map(str, IMAGENET_STAGES))}) or a CIFAR depth; "
                            f"{error}") from None
    close = difflib.get_close_matches(str(name), list(_REGISTRY), n=4, cutoff=0.5)
    hint = f"; closest: {', '.join(close)}" if close else ""
    raise UserError(f"unknown model {name!r}{hint} (see `resnets list`)")


def describe(name: str) -> dict:
    """What a model name is: {"name", "family", "kind", "depth"} (depth None for the generic
    builders, whose depth is an argument)."""
    entry = get_entry(name)
    return {"name": entry.name, "family": entry.family, "kind": entry.kind,
            "depth": entry.fixed.get("depth")}


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style pattern, in registration order."""
    return [name for name in _REGISTRY if fnmatch.fnmatchcase(name, pattern)]


def imagenet_model_of(state: dict) -> tuple[str, str] | None:
    """(name, what shows it) of the ImageNet residual network a state dict in torchvision's
    layout holds, read from its keys and shapes: the units per stage (`layerN.M.`), basic or
    bottleneck (`conv3`), the classifier's size; e.g. ("resnet50", "bottleneck units 3-4-6-3,
    fc of 1000 classes"). None for a layout that is none of IMAGENET_STAGES."""
    stages = tuple(len({key.split(".")[1] for key in state if key.startswith(f"layer{i}.")})
                   for i in range(1, 5))
    unit = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    depth = next((d for d, layout in IMAGENET_STAGES.items() if layout == (unit, stages)), None)
    head = state.get("fc.weight")
    if depth is None or "conv1.weight" not in state or getattr(head, "ndim", 0) != 2:
        return None
    return (f"resnet{depth}", f"{unit} units {'-'.join(map(str, stages))}, fc of "
                              f"{head.shape[0]:,} classes")
