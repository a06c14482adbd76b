"""Training configuration: one flat dataclass, presets as TOML data, validation.

Every field has one name, used identically in TOML files (`lr = 0.1`), CLI flags (`--lr 0.1`)
and override dicts (`{"lr": 0.1}`), as in nanoGPT's `GPTConfig`: `config.model` is the model
name, `config.data` the dataset. TOML files may group fields under `[model]`, `[data]`,
`[optim]` and `[run]` tables (the groups below); the names stay the same. A config is resolved
in layers: the dataclass defaults, then a preset (`src/resnets/train/presets/NAME.toml`), then
a TOML file, then overrides; each layer replaces the fields it names. Unknown names and bad
values raise `UserError`. Values are coerced to the field's annotated type
(`typing.get_type_hints`); choice lists come from the module that owns each choice.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from resnets.data.normalize import KINDS as NORMALIZERS
from resnets.data.views import AUGMENTS
from resnets.errors import UserError
from resnets.train.values import coerce_value, toml_value
from resnets.train.autocompile import check_setting as check_compile_setting
from resnets.train.device import PRECISIONS, check_device_name
from resnets.train.eval_policy import POLICIES as EVAL_POLICIES
from resnets.train.finetune import FREEZE
from resnets.train.schedule import SCHEDULES, WARMUP_MODES

PRESET_DIR = Path(__file__).with_name("presets")
GROUPS = ("model", "data", "optim", "run")  # TOML tables that may hold the fields below
# Names a field had before: read as the new name (config files and runs written earlier).
RENAMED = {"init_from": "weights"}
MAX_SEED = 2**63 - 1  # seeds are 0..MAX_SEED: torch.manual_seed takes no more than 64 bits
MAX_INT = 2**63 - 1   # no integer setting may overflow torch's int64
COMPILE_CHOICES = ("auto", "true", "false")  # the compile setting as a flag's value


def _field(default, help: str, group: str, choices: tuple | None = None,
           metavar: str | None = None):
    metadata = {"help": help, "choices": choices, "group": group, "metavar": metavar}
    if isinstance(default, (list, dict)):
        return field(default_factory=type(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class Config:
    """A resolved training configuration (see the module docstring for the layers)."""

    # --- model
    model: str = _field("resnet20", "model name from the registry (`resnets list`), or "
                        "resnetN / plainN / preact_resnetN for any valid depth", "model")
    # Extra keyword arguments for create_model, e.g. {shortcut = "B"}. num_classes and
    # in_channels always come from the dataset.
    model_args: dict = _field({}, "extra create_model keyword arguments (TOML inline table; "
                              "CLI: KEY=VALUE,KEY=VALUE)", "model")
    weights: str | None = _field(None, "start from trained weights: torchvision (torchvision's "
                                 "ImageNet weights, v1), torchvision:v2, a checkpoint or run "
                                 "directory (its model, unless the model is named), or a "
                                 "state-dict file; the classifier is new when "
                                 "the classes differ, the normalisation is the weights' own "
                                 "(none: random initialisation; --resume continues a run)",
                                 "model", metavar="WEIGHTS")
    freeze: str = _field("none", "keep these layers as the weights have them: none, stem "
                         "(conv1, bn1), layerK (the stem and stages 1..K), backbone (all but "
                         "the classifier fc); BatchNorm statistics included", "model",
                         choices=FREEZE)
    # --- data
    data: str = _field("bundled", "dataset: bundled | cifar10 | cifar100 | cifar100-coarse | "
                       "folder:PATH", "data")
    data_dir: str | None = _field(None, "folder holding the dataset (for cifar10/100: the "
                                  "archive or its extracted folder, e.g. from `resnets "
                                  "download`)", "data")
    val_fraction: float | None = _field(
        None, "fraction of training images held out for validation (None: the dataset's "
        "default, 0.1, as CIFAR's 5k of 50k; 0: no validation split)", "data")
    split_seed: int = _field(0, "seed of the train/validation split (fixed across runs so that "
                             "seeds vary the training, not the data)", "data")
    image_size: int | None = _field(None, "resize images to this size (None or 0: their own "
                                    "size)", "data")
    image_crop: int | None = _field(None, "keep the centre N x N pixels of the images of an "
                                    "in-memory set (bundled, CIFAR), at their resolution, after "
                                    "any image_size (None or 0: whole images)", "data")
    normalize: str = _field("channel", "input normalisation fitted on the training images",
                            "data", choices=NORMALIZERS)
    pad: int | None = _field(None, "pad-and-random-crop augmentation, pixels (0: off; None: "
                             "the dataset's default, 4 for photos, 2 for digits)", "data")
    flip: bool | None = _field(None, "random horizontal flips (None: the dataset's default, "
                               "off for digits, on for photos)", "data")
    augment: str = _field("pad-crop", "how training images are cropped: pad-crop (small images "
                          "of one size, in memory, padded and cropped in batches: digits, CIFAR); "
                          "paper (He et al. 3.4: shorter side random in [256, 480], random "
                          "224 crop); random-resized (torchvision: 8-100% of the area, aspect "
                          "3/4-4/3, resized to 224). The last two stream folder:PATH trees of "
                          "any size", "data", choices=AUGMENTS)
    crop_size: int = _field(224, "side of the square the model sees with augment paper | "
                            "random-resized, in training and evaluation", "data")
    # The paper and torchvision evaluate on the centre 224 of a 256 resize; torchvision's
    # newer weights (IMAGENET1K_V2) are evaluated at 232.
    resize_size: int | None = _field(None, "evaluation with augment paper | random-resized: "
                                     "shorter side resized to this, then the centre crop "
                                     "(None: crop_size x 8/7, 256 for 224)", "data")
    lighting: float | None = _field(None, "std of AlexNet's PCA colour noise (None: 0.1 with "
                                    "augment paper, as the paper; else 0)", "data")
    skip_bad_images: bool = _field(False, "leave out image files that cannot be decoded, "
                                   "counted in the summary (default: stop, naming the file)",
                                   "data")
    # --- optimisation
    epochs: float | None = _field(None, "length of training in epochs (exactly one of "
                                  "epochs / iters)", "optim")
    iters: int | None = _field(None, "length of training in optimizer steps", "optim")
    batch_size: int = _field(128, "images per step", "optim")
    lr: float = _field(0.1, "peak learning rate", "optim")
    momentum: float = _field(0.9, "SGD momentum", "optim")
    nesterov: bool = _field(False, "Nesterov momentum", "optim")
    wd: float = _field(5e-4, "weight decay (L2, applied to every parameter, as in the paper)",
                       "optim")
    # Soft targets (Szegedy et al. 2016): the right class gets 1 - x + x/classes, the others
    # x/classes; it keeps the logits from growing without bound, so a short run overfits less.
    label_smoothing: float = _field(0.0, "label smoothing of the training loss, 0 <= x < 1 "
                                    "(0: plain cross-entropy, as the paper)", "optim")
    backbone_lr_scale: float = _field(1.0, "the learning rate of every layer but the "
                                      "classifier fc is lr x this (e.g. 0.1 to fine-tune "
                                      "pretrained weights gently)", "optim")
    schedule: str = _field("cosine", "learning-rate decay after warm-up", "optim",
                           choices=SCHEDULES)
    milestones: list = _field([], "steps at which `step` multiplies lr by gamma (empty: at "
                              "50% and 75% of training, or milestone_epochs)", "optim")
    milestone_epochs: list = _field([], "epochs at which `step` multiplies lr by gamma, "
                                    "instead of milestones in steps (torchvision: 30,60)",
                                    "optim")
    # torchvision's recipe gives lr 0.1 for batch 256 and scales it linearly with the batch
    # (Goyal et al. 2017), so one preset serves any batch size.
    lr_reference_batch: int | None = _field(None, "batch size lr is given for: the lr used "
                                            "is lr x batch_size / this (None: lr as given)",
                                            "optim")
    gamma: float = _field(0.1, "lr factor at each milestone", "optim")
    warmup: int = _field(0, "warm-up length in steps (0: none)", "optim")
    warmup_mode: str = _field("linear", "linear: ramp from lr/warmup to lr; constant: hold "
                              "warmup_lr", "optim", choices=WARMUP_MODES)
    warmup_lr: float = _field(0.01, "lr during a constant warm-up", "optim")
    warmup_min_depth: int = _field(0, "apply the warm-up only to models at least this deep "
                                   "(paper: 110); 0: always", "optim")
    # --- run
    seed: int = _field(0, "seed of initialisation, shuffling and augmentation", "run")
    device: str = _field("auto", "auto (CUDA if present, else CPU) | cpu | cuda | cuda:N", "run")
    precision: str = _field("auto", "auto: bf16 where faster (CUDA, CPUs with AMX), else fp32; "
                            "bf16: autocast with fp32 weights; fp32: plain", "run",
                            choices=PRECISIONS)
    channels_last: bool = _field(True, "NHWC memory format (faster convolutions)", "run")
    # "auto", True or False (older files: true/false); resnets.train.autocompile decides "auto".
    compile: bool | str = _field(
        "auto", "torch.compile the training step (BN, ReLU and additions fused): auto "
        "compiles a run long enough to pay back the compile time, never one of a few hundred "
        "steps; --compile always, --no-compile never", "run", choices=COMPILE_CHOICES)
    # torch's default is every core: two trainings on one machine then fight over them.
    threads: int | None = _field(None, "CPU threads for torch (None: this process's share of "
                                 "the cores under torchrun, else torch's default, every "
                                 "core); 1 for each of several trainings on one machine",
                                 "run")
    out: str = _field("runs", "parent folder of run directories", "run")
    name: str | None = _field(None, "run directory name (None: MODEL-DATA-TIMESTAMP)", "run")
    log_every: int = _field(0, "steps between training lines in metrics.jsonl "
                            "(0: about 10 per epoch)", "run")
    eval_every: int = _field(0, "steps between evaluations (0: once per epoch); a "
                             "checkpoint is written at each", "run")
    # Which splits are evaluated at those points (resnets.train.eval_policy): the quickstart
    # needs one test figure, at the end; a study's Figure 6 draws test curves ("every").
    eval_val: str = _field("every", "when the validation split is evaluated: at every "
                           "evaluation point (every eval_every steps and the last) or only at "
                           "the end", "run", choices=EVAL_POLICIES)
    eval_test: str = _field("every", "when the test split is evaluated: at every evaluation "
                            "point (every eval_every steps and the last) or only at the end",
                            "run", choices=EVAL_POLICIES)
    eval_batch_size: int = _field(500, "images per evaluation batch", "run")
    # A checkpoint is written at every evaluation; a long run on many processes may want one
    # more often, since a restarted process group goes back to the last one.
    checkpoint_every: int = _field(0, "steps between checkpoints besides those written at "
                                   "each evaluation (0: only at evaluations)", "run")
    sync_bn: bool = _field(False, "under torchrun, BatchNorm statistics over the whole global "
                           "batch (SyncBatchNorm; needs CUDA: not on CPU)", "run")
    # torch's own default for gloo and NCCL is 30 minutes too; a rank that hangs longer ends
    # the job with an error instead of holding every process forever.
    dist_timeout: float = _field(1800.0, "seconds a process under torchrun waits for the "
                                 "others at a collective before the run stops with an error",
                                 "run")
    tensorboard: bool = _field(False, "also write TensorBoard event files into the run "
                               "directory (tensorboard --logdir runs/; pip install "
                               "'resnets[tensorboard]')", "run")
    workers: int | None = _field(None, "DataLoader worker processes decoding images streamed "
                                 "from disk (None: one per CPU core, at most 8); the batches "
                                 "do not depend on it", "run")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict by field name (what config.json and checkpoints store)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Config":
        """Inverse of `to_dict` (also accepts fields grouped in tables, as older files have
        them); validated."""
        return _build(_flatten(data, source="saved config"))

    def to_toml(self) -> str:
        """The config as a TOML file `--config` reads back, fields in their group tables
        (None values, which TOML cannot write, are left out: they are the defaults)."""
        lines = []
        for group in GROUPS:
            lines += ["", f"[{group}]"] + [
                f"{name} = {toml_value(value)}" for name, value in self.to_dict().items()
                if FIELDS[name].metadata["group"] == group and value is not None]
        return "\n".join(lines).lstrip() + "\n"

    def replace(self, **changes) -> "Config":
        """A validated copy with some fields changed (values coerced as from a file)."""
        return _build({**self.to_dict(), **changes})


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(Config)}
_TYPES = typing.get_type_hints(Config)


def list_presets() -> list[str]:
    """Names of the bundled presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def resolve_config(preset: str | None = None, file: str | Path | None = None,
                   overrides: dict | None = None) -> Config:
    """Build a validated `Config`: defaults, then `preset`, then TOML `file`, then `overrides`.

    Each layer replaces only the fields it names (flat names; TOML tables named after a
    section, e.g. `[optim]`, are accepted too); a layer's `[when.NAME]` table holds settings
    that apply only when the run's data is NAME, right after that layer's own. 0 for
    image_size or image_crop means none (it undoes an earlier layer's). Setting `epochs` in a layer clears an `iters`
    from an earlier layer and vice versa. Overrides whose value is None are ignored.

    For a new run: weights that are one of our runs or checkpoints bring their model unless
    `file` or `overrides` name one (a preset's model is a default, not a choice); `freeze`
    needs weights (it keeps layers as the weights have them). Saved configs of older runs are
    not held to these (`Config.from_dict`).
    """
    values: dict[str, Any] = {}
    layers: list[tuple[str, dict]] = []
    if preset is not None:
        path = PRESET_DIR / f"{preset}.toml"
        if not re.fullmatch(r"[A-Za-z0-9_-]+", preset) or not path.is_file():
            raise UserError(f"unknown preset {preset!r}; valid: {', '.join(list_presets())}")
        layers.append((f"preset {preset}", read_toml(path)))
    if file is not None:
        layers.append((str(file), read_toml(Path(file))))
    if overrides:
        layers.append(("settings", {k: v for k, v in overrides.items() if v is not None}))
    flats = [_layer_settings(layer, source) for source, layer in layers]
    data = next((f["data"] for f, _ in reversed(flats) if f.get("data") is not None),
                FIELDS["data"].default)
    named_model = False  # by the file or the overrides (a preset's model is its default)
    for index, ((source, _), (flat, when)) in enumerate(zip(layers, flats)):
        # a layer's settings, then those it gives for the dataset the run uses (`[when.NAME]`)
        for settings in (flat, when.get(data, {})):
            if "epochs" in settings and "iters" in settings \
                    and None not in (settings["epochs"], settings["iters"]):
                raise UserError(f"{source}: give epochs or iters, not both")
            if "epochs" in settings:
                values["iters"] = None
            if "iters" in settings:
                values["epochs"] = None
            values.update(settings)
            named_model |= "model" in settings and (preset is None or index > 0)
    config = _build(values)
    if config.weights is not None and not named_model:
        from resnets.models.weights import checkpoint_model

        held = checkpoint_model(config.weights)
        if held is not None and held != config.model:
            config = _build({**values, "model": held})
    if config.freeze != "none" and config.weights is None:
        raise UserError(f"freeze {config.freeze} keeps layers as the weights have them, but no "
                        f"weights are given: add --weights (without them the frozen layers "
                        f"would stay at their random initialisation)")
    return config


def read_toml(path: Path, what: str = "config file") -> dict:
    """A TOML file as a dict; a missing, unreadable, non-UTF-8 or malformed file is a
    `UserError` naming it (study files are read here too)."""
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as error:
        raise UserError(f"cannot read {path} ({error.strerror or error})") from None
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not valid TOML (not UTF-8 text: byte 0x{error.object[error.start]:02x} "
                        f"at position {error.start}); save it as UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"{path}: not valid TOML ({error})") from None


DATASET_NAMES = ("bundled", "cifar10", "cifar100", "cifar100-coarse")  # and folder:PATH


def _layer_settings(layer: dict, source: str) -> tuple[dict[str, Any], dict[str, dict]]:
    """(a layer's flat settings, {dataset name: the settings it gives for that dataset only}):
    a `[when.NAME]` table holds settings that apply only when the run's data is NAME (the
    quick preset resizes the bundled digits, not CIFAR); later layers still override them."""
    layer = dict(layer)
    when = layer.pop("when", {})
    if not isinstance(when, dict) or not all(isinstance(v, dict) for v in when.values()):
        raise UserError(f"{source}: [when.NAME] tables hold settings for dataset NAME, e.g. "
                        f"[when.bundled] image_crop = 20")
    conditional = {}
    for name, table in when.items():
        if name not in DATASET_NAMES and not name.startswith("folder:"):
            raise UserError(f"{source}: [when.{name}]: no dataset is named {name!r}; expected "
                            f"one of {', '.join(DATASET_NAMES)} or folder:PATH")
        settings = _flatten(table, f"{source} [when.{name}]")
        if "data" in settings:
            raise UserError(f"{source} [when.{name}]: data cannot depend on the data")
        conditional[name] = settings
    return _flatten(layer, source), conditional


def _flatten(data: dict, source: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in GROUPS and isinstance(value, dict):
            flat.update(_flatten(value, source))
        elif key in FIELDS or key in RENAMED:
            flat[RENAMED.get(key, key)] = value
        else:
            raise UserError(f"{source}: unknown config key {key!r}; valid keys: "
                            f"{', '.join(sorted(FIELDS))}")
    return flat


def _build(values: dict[str, Any]) -> Config:
    config = Config(**{name: _coerce(name, value) for name, value in values.items()})
    if config.model_args is None:
        config.model_args = {}
    if config.milestones is None:
        config.milestones = []
    if isinstance(config.weights, str) and config.weights.lower() == "none":
        config.weights = None  # a preset's weights undone from the command line
    for name in ("image_size", "image_crop"):
        if getattr(config, name) == 0:
            setattr(config, name, None)  # a preset's resize or crop undone: whole images
    _validate(config)
    return config


def field_type(name: str) -> tuple[type, bool]:
    """(the type a field holds, whether it may be None), from its annotation."""
    hint = _TYPES[name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return args[0], len(args) < len(typing.get_args(hint))
    return hint, False


def _coerce(name: str, value: Any) -> Any:
    """`value` as the type of field `name`: strings (from flags) parsed, numbers checked."""
    if name == "compile":  # "auto", True or False
        try:
            return check_compile_setting(value)
        except ValueError as error:
            raise UserError(str(error)) from None
    kind, optional = field_type(name)
    return coerce_value(name, value, kind, optional, FIELDS[name].metadata.get("choices"))


def check_seed(name: str, value: Any) -> int:
    """`value` if it is a seed torch takes (an integer in 0..MAX_SEED), else a `UserError`."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise UserError(f"{name} must be an integer in 0..{MAX_SEED} (2**63-1), got {value!r}")
    return value


def _validate(config: Config) -> None:
    _check_numbers(config)
    _check_combinations(config)


def _check_numbers(config: Config) -> None:
    """Every number within what it can mean: seeds, counts, rates."""
    check_seed("seed", config.seed)
    check_seed("split_seed", config.split_seed)
    for name in FIELDS:
        value = getattr(config, name)
        if field_type(name)[0] is int and isinstance(value, int) and abs(value) > MAX_INT:
            raise UserError(f"{name} is out of range (at most {MAX_INT}), got {value}")
    if any(abs(m) > MAX_INT for m in config.milestones):
        raise UserError(f"milestones are out of range (at most {MAX_INT}), got {config.milestones}")
    if (config.epochs is None) == (config.iters is None):
        raise UserError("set exactly one of epochs or iters (e.g. --epochs 20 or --iters 64000)")
    if config.epochs is not None and not config.epochs > 0:
        raise UserError(f"epochs must be > 0, got {config.epochs}")
    if config.iters is not None and config.iters < 1:
        raise UserError(f"iters must be >= 1, got {config.iters}")
    positive = {"batch_size": 1, "eval_batch_size": 1}
    for name, low in positive.items():
        if getattr(config, name) < low:
            raise UserError(f"{name} must be >= {low}, got {getattr(config, name)}")
    for name in ("lr", "warmup_lr", "gamma", "dist_timeout", "backbone_lr_scale"):
        if not getattr(config, name) > 0:
            raise UserError(f"{name} must be > 0, got {getattr(config, name)}")
    for name in ("momentum", "wd", "warmup", "warmup_min_depth", "pad", "log_every",
                 "eval_every", "lighting", "workers", "checkpoint_every"):
        if getattr(config, name) is not None and getattr(config, name) < 0:
            raise UserError(f"{name} must be >= 0, got {getattr(config, name)}")


def _check_combinations(config: Config) -> None:
    """Settings that contradict each other, or a model, data or run option that cannot be."""
    if not 0 <= config.momentum < 1:
        raise UserError(f"momentum must be in [0, 1), got {config.momentum}")
    if config.nesterov and config.momentum == 0:
        raise UserError("nesterov needs momentum > 0")
    if not 0 <= config.label_smoothing < 1:
        raise UserError(f"label_smoothing must be in [0, 1), got {config.label_smoothing}")
    if config.val_fraction is not None and not 0 <= config.val_fraction < 1:
        raise UserError(f"val_fraction must be in [0, 1), got {config.val_fraction}")
    for name in ("image_size", "image_crop"):
        if getattr(config, name) is not None and getattr(config, name) < 1:
            raise UserError(f"{name} must be >= 1 (0: none), got {getattr(config, name)}")
    if any(m < 1 for m in config.milestones) or config.milestones != sorted(config.milestones):
        raise UserError(f"milestones must be increasing positive steps, got {config.milestones}")
    if any(m < 1 for m in config.milestone_epochs) or \
            config.milestone_epochs != sorted(config.milestone_epochs):
        raise UserError(f"milestone_epochs must be increasing positive epochs, got "
                        f"{config.milestone_epochs}")
    if config.milestones and config.milestone_epochs:
        raise UserError("give milestones (steps) or milestone_epochs, not both")
    for name in ("crop_size", "lr_reference_batch"):
        if getattr(config, name) is not None and getattr(config, name) < 1:
            raise UserError(f"{name} must be >= 1, got {getattr(config, name)}")
    if config.resize_size is not None and config.resize_size < config.crop_size:
        raise UserError(f"resize_size must be >= crop_size ({config.crop_size}), got "
                        f"{config.resize_size}")
    if config.augment != "pad-crop" and config.image_size is not None:
        raise UserError(f"image_size applies to augment pad-crop; augment {config.augment} cuts "
                        f"crop_size views from images of any size: drop image_size")
    check_device_name(config.device)
    if config.name is not None and (not config.name or "/" in config.name or
                                    config.name in (".", "..")):
        raise UserError(f"name must be a plain folder name, got {config.name!r}")
    if config.weights == "":
        raise UserError("weights must not be empty: torchvision, torchvision:v2, a checkpoint, "
                        "a run directory or a state-dict file (none: random initialisation)")
    for key in ("num_classes", "in_channels"):
        if key in config.model_args:
            raise UserError(f"model_args must not set {key}: it comes from the dataset")
    if config.threads is not None and config.threads < 1:
        raise UserError(f"threads must be >= 1, got {config.threads}")
