"""Pretrained weights: torchvision's ImageNet releases, resnets checkpoints, state-dict files.

`create_model(name, weights=...)` and training's `--weights` come here. A weights value is

- `"torchvision"` (= `"torchvision:v1"`) or `"torchvision:v2"`: torchvision's published ImageNet
  weights for resnet18/34/50/101/152 (v2 for 50/101/152 only), listed with their URL, file hash,
  accuracy, parameter count and evaluation transform in `torchvision_weights.toml`. They are
  fetched once through `torch.hub.download_url_to_file(..., hash_prefix=)` into torch's hub
  cache (`$TORCH_HOME/hub/checkpoints`, by default `~/.cache/torch/hub/checkpoints`), where a
  file torchvision already downloaded is found and reused. torch.hub writes a download to a
  temporary file and renames it only once its SHA-256 matches, so a dropped connection or a
  wrong file leaves nothing behind; a file found in the cache is checked against the hash in
  its name once (`resnets.models.hub`). They need `bottleneck_stride="3x3"` (set for them);
- a resnets checkpoint or run directory: its weights, normaliser and classes;
- any other file: a state dict in torchvision's layout (a release downloaded by hand, or
  `resnets export --torchvision`), with torchvision's input normalisation.

`load_pretrained(weights, model)` reads them into a `Pretrained` (the state dict and what it
implies: model options, classes, normalisation, evaluation resize); `load_body` loads it into a
model strictly, every tensor but a classifier (`fc`) of another size, which keeps the fresh
initialisation the model was built with.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnets.errors import UserError
from resnets.models.files import MODEL_KEYS, check_checkpoint, read_torch_file, require
from resnets.models.files import resolve_checkpoint_path
from resnets.models.zoo import IMAGENET_STAGES, get_entry
from resnets.models.hub import as_state_dict, cached_file, fetch_state_dict, verify_cached

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

TABLE = Path(__file__).with_name("torchvision_weights.toml")
TORCHVISION = "torchvision"
HEAD = "fc"  # the classifier's module name, torchvision's
SPECS_HELP = ("torchvision, torchvision:v2, a checkpoint or run directory, or a state-dict file "
              "in torchvision's layout")


@dataclass(frozen=True)
class Release:
    """One of torchvision's published weight files (a `[[release]]` of the table)."""

    model: str             # our (and torchvision's) model name
    version: str           # "v1" | "v2": `torchvision:VERSION`
    torchvision_name: str  # IMAGENET1K_V1 | IMAGENET1K_V2
    url: str
    sha256: str            # the start of the file's SHA-256, as in its name
    num_params: int
    acc1: float            # torchvision's ImageNet validation top-1 / top-5 accuracy (%)
    acc5: float
    resize_size: int       # evaluation: shorter side resized to this, then the centre crop
    crop_size: int
    recipe: str

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def spec(self) -> str:
        return f"{TORCHVISION}:{self.version}"

    def describe(self) -> str:
        return f"torchvision's {self.model} {self.torchvision_name} weights"


@functools.lru_cache(maxsize=None)
def _table() -> dict[str, Any]:
    with open(TABLE, "rb") as file:
        return tomllib.load(file)


def releases() -> list[Release]:
    """Every release in the table, in its order."""
    return [Release(**entry) for entry in _table()["release"]]


def transform() -> dict[str, Any]:
    """The evaluation transform the releases share: mean, std (per channel, [0, 1] scale),
    interpolation; each release adds its resize_size and crop_size."""
    return {key: value for key, value in _table()["transform"].items() if key not in ("classes", "wnids")}


@functools.lru_cache(maxsize=None)
def _classes() -> tuple[str, ...]:
    path = TABLE.with_name(_table()["transform"]["classes"])
    return tuple(line for line in path.read_text(encoding="utf-8").splitlines() if line)


def imagenet_classes() -> list[str]:
    """ImageNet's 1,000 class names in the order of the weights' outputs (torchvision's)."""
    return list(_classes())


@functools.lru_cache(maxsize=None)
def _wnids() -> tuple[str, ...]:
    path = TABLE.with_name(_table()["transform"]["wnids"])
    return tuple(line for line in path.read_text(encoding="ascii").splitlines() if line)


def imagenet_wnids() -> list[str]:
    """ImageNet's 1,000 WordNet ids (n01440764 ... n15075141, the names of its class folders),
    in the order of the weights' outputs: sorted, as torchvision's folder reader numbers them."""
    return list(_wnids())


def torchvision_version(weights: str) -> str | None:
    """"v1" for "torchvision", the version of "torchvision:VERSION" (v1, v2, or torchvision's
    own IMAGENET1K_V2), None for anything else (a path)."""
    if weights == TORCHVISION:
        return "v1"
    prefix = TORCHVISION + ":"
    if not weights.startswith(prefix):
        return None
    version = weights[len(prefix):].lower()
    return version.replace("imagenet1k_", "") if version.startswith("imagenet1k_") else version


def release(model: str, version: str = "v1") -> Release:
    """The release of torchvision's weights for `model`, or a UserError naming what exists."""
    found = [r for r in releases() if r.model == model]
    if not found:
        names = sorted({r.model for r in releases()}, key=lambda n: int(n[len("resnet"):]))
        raise UserError(f"torchvision publishes ImageNet weights for {', '.join(names)}, not "
                        f"{model!r}")
    for candidate in found:
        if candidate.version == version:
            return candidate
    raise UserError(f"{TORCHVISION}:{version}: torchvision has no such release of {model} "
                    f"weights; it has {', '.join(r.spec for r in found)}")


# --------------------------------------------------------------- what the weights imply
@dataclass
class Pretrained:
    """Weights read from any source, with what they imply about the model and its inputs."""

    source: str                          # for messages: what and where the weights are
    state_dict: dict[str, torch.Tensor]
    classes: list[str]                   # the weights' classes, in output order
    normalizer: dict                     # Normalizer state: the inputs the weights expect
    input_size: list[int]                # [C, H, W] they were trained on
    model: str | None = None             # the model they were saved from (None: unknown)
    model_kwargs: dict = field(default_factory=dict)  # options they need (no num_classes, in_channels)
    fixed: tuple[str, ...] = ()          # keys of model_kwargs another value would break silently
    class_names: list[str] | None = None
    resize_size: int | None = None       # evaluation resize (torchvision: 256 or 232)
    release: Release | None = None
    checkpoint: dict | None = None       # the resnets checkpoint, when the weights are one
    path: Path | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return self.input_size[0]


def imagenet_normalizer() -> dict:
    """The Normalizer state of torchvision's input normalisation (on the [0, 255] scale)."""
    table = transform()
    return {"kind": "channel", "mean": torch.tensor(table["mean"]).view(-1, 1, 1) * 255,
            "std": torch.tensor(table["std"]).view(-1, 1, 1) * 255}


def uses_bottleneck(model: str, kwargs: dict | None = None) -> bool:
    """Whether `model` (with `kwargs`, e.g. a depth) is an ImageNet network of bottleneck
    units, whose stride placement the state dict does not show."""
    try:
        entry = get_entry(model)
    except UserError:
        return False
    depth = (kwargs or {}).get("depth", entry.fixed.get("depth"))
    return entry.family == "imagenet" and IMAGENET_STAGES.get(depth, ("basic",))[0] == "bottleneck"


def _torchvision_stride(model: str) -> dict:
    return {"bottleneck_stride": "3x3"} if uses_bottleneck(model) else {}


def load_pretrained(weights: str, model: str | None = None, *,
                    progress: bool | None = None) -> Pretrained:
    """Read `weights` (see the module docstring) for the registered model `model` (needed for
    torchvision's releases, which exist per model)."""
    if not isinstance(weights, str) or not weights:
        raise UserError(f"weights must be {SPECS_HELP}, got {weights!r}")
    version = torchvision_version(weights)
    if version is not None:
        if model is None:
            raise UserError(f"weights {weights}: name the model (resnet18, resnet34, resnet50, "
                            f"resnet101, resnet152)")
        entry = release(model, version)
        return _from_release(entry, fetch_state_dict(entry, progress=progress),
                             entry.describe(), cached_file(entry))
    path = weights_path(weights)
    value = _read(path)
    if isinstance(value, dict) and value.get("format") == "resnets-checkpoint":
        return _from_checkpoint(value, path)
    state = as_state_dict(value, path)
    known = next((r for r in releases() if r.file_name == path.name), None)
    if known is not None:  # a release downloaded or copied by hand: what its name says?
        spec = "torchvision" if known.version == "v1" else f"torchvision:{known.version}"
        verify_cached(path, known.sha256, remedy=f"rename it to load it as weights of your "
                                                 f"own, or give --weights {spec} for the "
                                                 f"release itself")
        return _from_release(known, state, f"{path} ({known.describe()})", path)
    outputs = state[f"{HEAD}.weight"].shape[0] if f"{HEAD}.weight" in state else 1000
    imagenet = outputs == 1000
    classes = imagenet_wnids() if imagenet else [f"class{k}" for k in range(outputs)]
    channels = state["conv1.weight"].shape[1] if "conv1.weight" in state else 3
    from resnets.models.zoo import imagenet_model_of

    held = imagenet_model_of(state)  # what the keys show: named where a model does not fit
    return Pretrained(source=str(path) if held is None else f"{path} ({held[1]})",
                      state_dict=state, classes=classes,
                      class_names=imagenet_classes() if imagenet else None,
                      normalizer=imagenet_normalizer(), input_size=[channels, 224, 224],
                      model=None if held is None else held[0],
                      model_kwargs=_torchvision_stride(model) if model else {},
                      resize_size=256, path=path)


def weights_path(weights: str) -> Path:
    """The file `weights` names (a run directory's last checkpoint), or a UserError."""
    path = Path(weights).expanduser()
    if path.is_dir():
        return resolve_checkpoint_path(path)
    if not path.is_file():
        raise UserError(f"weights not found: {weights} (expected {SPECS_HELP})")
    return path


def checkpoint_model(weights: str) -> str | None:
    """The model a resnets checkpoint or run directory `weights` was trained as; None for
    torchvision's weights and state-dict files (which do not name one), and where `weights`
    names nothing (`check_weights` says so where the weights are needed)."""
    if torchvision_version(weights) is not None or not Path(weights).expanduser().exists():
        return None
    pretrained = load_pretrained(weights)
    return pretrained.model if pretrained.checkpoint is not None else None


def check_weights(weights: str, model: str, model_kwargs: dict | None = None) -> None:
    """Refuse, before any work, weights that cannot be had for `model`: an unknown release, a
    file that is not there, a bottleneck stride torchvision's weights were not trained with."""
    version = torchvision_version(weights)
    if version is None:
        weights_path(weights)
        return
    entry = release(model, version)
    _check_fixed(model, _from_release(entry, {}, entry.describe(), None), model_kwargs or {})


def _read(path: Path) -> Any:
    return read_torch_file(path, "weights")


def _from_release(entry: Release, state: dict, source: str, path: Path | None) -> Pretrained:
    stride = _torchvision_stride(entry.model)
    return Pretrained(source=source, state_dict=state, classes=imagenet_wnids(),
                      class_names=imagenet_classes(),
                      normalizer=imagenet_normalizer(),
                      input_size=[3, entry.crop_size, entry.crop_size], model=entry.model,
                      model_kwargs=stride, fixed=tuple(stride), resize_size=entry.resize_size,
                      release=entry, path=path)


def _from_checkpoint(value: dict, path: Path) -> Pretrained:
    """The checkpoint `value`, read from `path` (once: `load_pretrained`), as weights."""
    checkpoint = check_checkpoint(value, path)
    require(checkpoint, MODEL_KEYS, path)
    name = checkpoint["model"]
    kwargs = {k: v for k, v in checkpoint["model_kwargs"].items()
              if k not in ("num_classes", "in_channels")}
    fixed: tuple[str, ...] = ()
    if uses_bottleneck(name, kwargs):  # the stride the weights were trained with
        kwargs.setdefault("bottleneck_stride", "1x1")
        fixed = ("bottleneck_stride",)
    return Pretrained(source=str(path), state_dict=as_state_dict(checkpoint["model_state"], path),
                      classes=list(checkpoint["classes"]), normalizer=checkpoint["normalizer"],
                      input_size=list(checkpoint["input_size"]), model=name, model_kwargs=kwargs,
                      fixed=fixed, class_names=checkpoint.get("class_names"),
                      checkpoint=checkpoint, path=path)


def _check_fixed(model: str, pretrained: Pretrained, kwargs: dict) -> None:
    for key in pretrained.fixed:
        if key in kwargs and kwargs[key] != pretrained.model_kwargs[key]:
            what = (" (torchvision's v1.5 placement)" if pretrained.release is not None else "")
            raise UserError(f"{pretrained.source} were trained with {key}="
                            f"{pretrained.model_kwargs[key]!r}{what}; {model} with {key}="
                            f"{kwargs[key]!r} would load them but compute something else: leave "
                            f"{key} out")


def architecture(model: str, pretrained: Pretrained, kwargs: dict) -> dict:
    """The keyword arguments to build `model` with for these weights: `kwargs` over the
    options the weights imply; a UserError where `kwargs` contradicts one they fix."""
    _check_fixed(model, pretrained, kwargs)
    return {**pretrained.model_kwargs, **kwargs}


def load_body(model: nn.Module, pretrained: Pretrained, name: str, *,
              keep_head: bool | None = None) -> bool:
    """Load the weights into `model` strictly: every tensor must be there with its shape, but
    the classifier (`fc`), which stays as the model was built (its fresh initialisation) when
    `keep_head` is False, or, by default, when its size differs. Returns whether it was kept.
    A mismatch is one line naming the first differing keys and shapes."""
    expected = model.state_dict()
    given = dict(pretrained.state_dict)
    for key in expected:  # older files lack it; BatchNorm fills it in as 0
        stem = key.rsplit(".", 1)[0]
        if key.endswith("num_batches_tracked") and key not in given \
                and f"{stem}.running_mean" in given:
            given[key] = torch.tensor(0)
    head = [key for key in expected if key.startswith(HEAD + ".")]
    if keep_head is None:
        keep_head = all(key in given and given[key].shape == expected[key].shape for key in head)
    if not keep_head:
        given = {k: v for k, v in given.items() if not k.startswith(HEAD + ".")}
        expected = {k: v for k, v in expected.items() if not k.startswith(HEAD + ".")}
    problem = describe_mismatch(expected, given)
    if problem and pretrained.model is not None and pretrained.model != name:
        raise UserError(f"{pretrained.source}: the weights are a {pretrained.model}'s, they do "
                        f"not fit model {name!r} (use {pretrained.model}, e.g. --model "
                        f"{pretrained.model}; {problem})")
    if problem:
        raise UserError(f"{pretrained.source}: the weights do not fit model {name!r} ({problem})")
    unusable = describe_non_finite(given)
    if unusable:
        raise UserError(f"{pretrained.source}: the weights are not usable ({unusable})")
    model.load_state_dict(given, strict=keep_head)
    return keep_head


def create_pretrained(name: str, weights: str, **kwargs) -> nn.Module:
    """`create_model(name, weights=weights, **kwargs)`: the model built for the weights (their
    classes and channels unless `kwargs` says otherwise) with the weights loaded; a different
    `num_classes` gets a new classifier, initialised as usual."""
    entry = get_entry(name)  # an unknown name is named before anything is read
    check_weights(weights, name, kwargs)  # and what cannot fit, before anything is fetched
    pretrained = load_pretrained(weights, name)
    kwargs = architecture(name, pretrained, kwargs)
    kwargs.setdefault("num_classes", pretrained.num_classes)
    kwargs.setdefault("in_channels", pretrained.in_channels)
    model = entry.build(**kwargs)
    load_body(model, pretrained, name)
    return model


def describe_non_finite(state: dict, shown: int = 3) -> str | None:
    """One line naming the tensors of a state dict that hold NaN or infinity, or a BatchNorm
    running variance below 0 (a file edited or written by a run that diverged); None when
    every value is usable."""
    bad = [key for key, tensor in state.items()  # (meta tensors hold no values to check)
           if isinstance(tensor, torch.Tensor) and tensor.is_floating_point()
           and tensor.device.type != "meta"
           and (not torch.isfinite(tensor).all()
                or (key.endswith("running_var") and bool((tensor < 0).any())))]
    if not bad:
        return None
    more = f" (and {len(bad) - shown} more)" if len(bad) > shown else ""
    return f"non-finite or impossible values in {', '.join(bad[:shown])}{more}"


def describe_mismatch(expected: dict, given: dict, shown: int = 3) -> str | None:
    """One line naming the first keys where a checkpoint's state dict (`given`) differs from a
    model's (`expected`): missing keys, unexpected keys, `key: checkpoint (a, b) vs model
    (c, d)`; None when they fit."""
    def shape(tensor) -> str:
        return f"({', '.join(map(str, getattr(tensor, 'shape', ())))})"

    missing = [key for key in expected if key not in given]
    unexpected = [key for key in given if key not in expected]
    shapes = [f"{key}: checkpoint {shape(given[key])} vs model {shape(expected[key])}"
              for key in expected if key in given and shape(given[key]) != shape(expected[key])]
    found = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                         ("shapes differ", shapes)):
        if items:
            more = f" (and {len(items) - shown} more)" if len(items) > shown else ""
            found.append(f"{label}: {', '.join(items[:shown])}{more}")
    return "; ".join(found) or None
