"""Training state: what a checkpoint holds, written and read in this one place.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (so it loads with
`weights_only=True`), with these keys:

    format, version        resnets-checkpoint, 1 (added by `checkpoint.save_checkpoint`)
    model, model_kwargs    the registry name and the keyword arguments it was built with
    model_state            the model's state dict
    optimizer_state        the optimizer's state dict
    step                   optimizer steps taken; with the config, the whole position of a run
    schedule               {"step", "lr"}: the learning rate at `step`, for readers
    rng                    torch's global RNG states ({"torch", "cuda"})
    config                 the resolved config (Config.to_dict())
    normalizer             the normaliser's state dict
    classes, input_size    class names and the [C, H, W] of the training images
    class_names            display names of the classes (an image folder's classes.txt), or None
    data                   the dataset's name
    progress               {"counters", "meter"}: the running figures of the metrics file
    best                   {"step", "err", "split"}: the best evaluation so far
    precision              the arithmetic the run trains in ("bf16" | "fp32")
    compiled               whether training steps run compiled (True | False), once decided
                           (resnets.train.autocompile); None before
    world_size             the processes that trained it (torchrun; 1 without); rank 0's
                           meter holds all of theirs, its loss_terms the number of process
                           step losses in its loss_sum (optional: 1 when absent)
"""

from __future__ import annotations

import math
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnets.errors import UserError
from resnets.models.files import MODEL_KEYS, check_model_fields, is_count, refuse_field
from resnets.models.weights import describe_mismatch, describe_non_finite
from resnets.train.checkpoint import rng_state, save_checkpoint, set_rng_state
from resnets.train.config import Config
from resnets.train.device import PRECISIONS
from resnets.train.sgd import SGD

# What a checkpoint must hold to continue training (MODEL_KEYS: to rebuild its model).
TRAINING_KEYS = MODEL_KEYS + ("optimizer_state", "step", "rng", "progress", "best")


@dataclass
class Meter:
    """Training figures accumulated since the last training line (sums kept on the device, so
    a step never waits for the device).

    `loss_sum` holds this process's share of each step's loss (its loss / the processes), so
    the processes' sums add up to the sum of the steps' losses over the global batch, and the
    line's loss is that sum / steps whatever number of processes took each step: a checkpoint
    saved by two processes and resumed on one (or the other way) keeps its mean right."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    steps: int = 0
    images: int = 0
    seconds: float = 0.0

    @classmethod
    def zero(cls, device: torch.device) -> "Meter":
        return cls(torch.zeros((), dtype=torch.float64, device=device),
                   torch.zeros((), dtype=torch.long, device=device))

    def add(self, loss: torch.Tensor, correct: torch.Tensor, images: int,
            processes: int = 1) -> None:
        """One step: this process's mean `loss` over its part of the global batch, taken by
        `processes` processes with equal parts."""
        self.loss_sum += loss / processes
        self.correct += correct
        self.steps += 1
        self.images += images

    def state_dict(self) -> dict:
        # "step_loss_sum": the sum of the steps' global losses (a checkpoint before it saved
        # "loss_sum", the processes' sums of their own losses: `from_state_dict` reads both)
        return {"step_loss_sum": self.loss_sum.item(), "correct": int(self.correct.item()),
                "steps": self.steps, "images": self.images, "seconds": self.seconds}

    @classmethod
    def from_state_dict(cls, state: dict, device: torch.device, world_size: int = 1
                        ) -> "Meter":
        """`state` as `state_dict` wrote it, or as it was written before "step_loss_sum" by
        `world_size` processes."""
        meter = cls.zero(device)
        meter.loss_sum += (state["step_loss_sum"] if "step_loss_sum" in state
                           else state["loss_sum"] / world_size)
        meter.correct += state["correct"]
        meter.steps, meter.images, meter.seconds = state["steps"], state["images"], state["seconds"]
        return meter


@dataclass
class Counters:
    """Totals over the whole run, across resumes."""

    time: float = 0.0           # seconds since the run started
    train_seconds: float = 0.0  # of which in training steps (not evaluation)
    train_images: int = 0
    skipped: list = field(default_factory=list)  # messages of unreadable images left out


@dataclass
class TrainState:
    """A model with everything needed to feed it, and (while training) to continue it."""

    config: Config
    model: nn.Module
    model_kwargs: dict
    normalizer: Any           # resnets.data.Normalizer fitted on the training images
    classes: list[str]
    input_size: list[int]     # [C, H, W] of the training images
    precision: str            # "bf16" | "fp32"
    class_names: list[str] | None = None  # display names, when the dataset has them
    optimizer: SGD | None = None
    step: int = 0
    best: dict = field(default_factory=lambda: {"step": None, "err": None, "split": None})
    counters: Counters = field(default_factory=Counters)
    meter: Meter | None = None
    compiled: bool | None = None  # the compile decision, once final
    world_size: int = 1       # processes training it together (torchrun)

    def state_dict(self, lr: float) -> dict[str, Any]:
        """The checkpoint (see the module docstring); `lr` is the rate at `self.step`."""
        from resnets.models.fold import check_not_folded

        check_not_folded(self.model)  # an inference copy never becomes a checkpoint
        return {"model": self.config.model, "model_kwargs": self.model_kwargs,
                "model_state": self.model.state_dict(),
                "optimizer_state": self.optimizer.state_dict(),
                "step": self.step, "schedule": {"step": self.step, "lr": lr},
                "rng": rng_state(), "config": self.config.to_dict(),
                "normalizer": self.normalizer.state_dict(), "classes": list(self.classes),
                "class_names": None if self.class_names is None else list(self.class_names),
                "input_size": list(self.input_size), "data": self.config.data,
                "progress": {"counters": {**vars(self.counters),
                                          "skipped": list(self.counters.skipped)},
                             "meter": self.meter.state_dict()},
                "best": dict(self.best), "precision": self.precision,
                "compiled": self.compiled, "world_size": self.world_size}

    def labels(self) -> list[str]:
        """The classes as a person reads them: display names where the dataset has them."""
        return display_labels(self.classes, self.class_names)

    def save(self, path: str | Path, lr: float) -> Path:
        return save_checkpoint(self.state_dict(lr), path)

    def load_state_dict(self, checkpoint: dict, path: str | Path = "checkpoint") -> None:
        """Continue from `checkpoint`: weights, optimizer, step, figures and global RNG."""
        require(checkpoint, TRAINING_KEYS, path)
        load_weights(self.model, checkpoint, path)
        restore = {"optimizer_state": self.optimizer.load_state_dict, "rng": set_rng_state,
                   "progress": lambda progress: self._load_progress(
                       progress, checkpoint.get("world_size", 1))}
        for key, load in restore.items():
            try:
                load(checkpoint[key])
            except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as error:
                raise UserError(f"{path}: checkpoint field {key} cannot be restored "
                                f"({_reason(error)}; was it edited?)") from None
        self.step = checkpoint["step"]
        self.best = dict(checkpoint["best"])

    def _load_progress(self, progress: dict, world_size: int) -> None:
        self.counters = Counters(**progress["counters"])
        self.counters.skipped = list(self.counters.skipped)
        device = self.meter.loss_sum.device if self.meter is not None else torch.device("cpu")
        self.meter = Meter.from_state_dict(progress["meter"], device, world_size)

    @classmethod
    def from_checkpoint(cls, checkpoint: dict, parts, path: str | Path = "checkpoint"
                        ) -> "TrainState":
        """The model of a checkpoint, rebuilt and loaded (fp32, CPU), for inference."""
        require(checkpoint, MODEL_KEYS, path)
        try:
            config = Config.from_dict(checkpoint["config"])
        except UserError as error:
            raise UserError(f"{path}: checkpoint field config: {error} (was it edited?)") from None
        try:
            model = parts.create_model(checkpoint["model"], **checkpoint["model_kwargs"])
        except (UserError, TypeError, ValueError) as error:  # a name or option it never had
            raise UserError(f"{path}: the checkpoint does not fit model "
                            f"{checkpoint['model']!r}: {error}") from None
        load_weights(model, checkpoint, path)
        return cls(config=config, model=model, model_kwargs=dict(checkpoint["model_kwargs"]),
                   normalizer=_normalizer(checkpoint, parts, path),
                   classes=list(checkpoint["classes"]),
                   class_names=checkpoint.get("class_names"),
                   input_size=list(checkpoint["input_size"]),
                   precision=checkpoint.get("precision", "fp32"),
                   step=checkpoint.get("step", 0))


def display_labels(classes: list, class_names: list | None) -> list[str]:
    """Classes as a person reads them (a TrainState's, or a checkpoint's "classes" and
    "class_names"): display names where the dataset has them."""
    return list(class_names) if class_names else list(classes)


def require(checkpoint: dict, keys: tuple[str, ...], path: str | Path) -> None:
    """A UserError naming what a (hand-edited or foreign) checkpoint lacks, or the first field
    whose value is of the wrong kind or contradicts another field."""
    missing = [key for key in keys if key not in checkpoint]
    if missing:
        raise UserError(f"{path}: checkpoint lacks {', '.join(missing)} (was it edited or "
                        f"written by another program?)")
    check_model_fields(checkpoint, path)
    _check_training_fields(checkpoint, path)


def _check_training_fields(checkpoint: dict, path: str | Path) -> None:
    """The kinds of the fields present in `checkpoint` that continue its training."""
    def wrong(key: str, fits) -> bool:
        return key in checkpoint and not fits(checkpoint[key])

    def refuse(key: str, expected: str):
        raise refuse_field(checkpoint, key, expected, path)

    if wrong("step", lambda v: is_count(v, 0)):
        refuse("step", "a number of steps (an integer >= 0)")
    trained_in = [p for p in PRECISIONS if p != "auto"]  # what "auto" was resolved to
    if wrong("precision", lambda v: v in trained_in):
        refuse("precision", " or ".join(trained_in))
    if wrong("compiled", lambda v: v is None or isinstance(v, bool)):
        refuse("compiled", "true, false or none")
    if wrong("progress", lambda v: isinstance(v, dict) and isinstance(v.get("counters"), dict)
             and isinstance(v.get("meter"), dict)):
        refuse("progress", "a dict of counters and meter")
    _check_numbers(checkpoint, path)


def _finite(value, low: float = float("-inf"), high: float = float("inf")) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and low <= value <= high)


def _check_numbers(checkpoint: dict, path: str | Path) -> None:
    """Every number of the training's fields is finite and in its range: the best error a
    percentage, the learning rate, times and counts >= 0 (the normaliser's: check_model_fields)."""
    def check(where: str, value, fits) -> None:
        if not fits(value):
            raise UserError(f"{path}: checkpoint field {where} is {reprlib.repr(value)}: "
                            f"expected a finite number in range (was it edited?)")

    best = checkpoint.get("best", {})
    if best.get("err") is not None:
        check("best.err", best["err"], lambda v: _finite(v, 0.0, 100.0))
    if best.get("step") is not None:
        check("best.step", best["step"], lambda v: isinstance(v, int) and _finite(v, 0))
    if isinstance(checkpoint.get("schedule"), dict) and "lr" in checkpoint["schedule"]:
        check("schedule.lr", checkpoint["schedule"]["lr"], lambda v: _finite(v, 0.0))
    progress = checkpoint.get("progress", {})
    for part in ("counters", "meter"):
        for key, value in progress.get(part, {}).items():
            if key in ("time", "train_seconds", "train_images", "seconds", "steps", "images",
                       "correct"):
                check(f"progress.{part}.{key}", value, lambda v: _finite(v, 0.0))
            elif key in ("loss_sum", "step_loss_sum"):
                check(f"progress.{part}.{key}", value, _finite)


def _normalizer(checkpoint: dict, parts, path: str | Path):
    """The checkpoint's normaliser, checked (on the meta device: shapes only) to map an image
    of its input size to one of the same shape: an edited mean or std fails here, in one line,
    not at the first prediction."""
    size = tuple(checkpoint["input_size"])
    try:
        normalizer = parts.normalizer_from_state(checkpoint["normalizer"])
    except (UserError, KeyError, TypeError, ValueError, AttributeError, RuntimeError) as error:
        raise UserError(f"{path}: checkpoint field normalizer: {_reason(error)} (was it "
                        f"edited?)") from None
    try:
        shape = tuple(normalizer(torch.zeros(1, *size, device="meta")).shape)
        reason = None if shape == (1, *size) else f"it maps an image to shape {shape}"
    except (UserError, KeyError, TypeError, ValueError, AttributeError, RuntimeError) as error:
        reason = _reason(error)
    if reason is not None:
        raise UserError(f"{path}: checkpoint field normalizer does not fit input_size "
                        f"{list(size)} ({reason}; was it edited?)")
    return normalizer


def _reason(error: Exception) -> str:
    """What went wrong, in a few words, for a message about an edited field."""
    if isinstance(error, KeyError):
        return f"no {error.args[0]!r} entry"
    return (str(error).splitlines() or [type(error).__name__])[0]


def load_weights(model: nn.Module, checkpoint: dict, path: str | Path) -> None:
    """Load `checkpoint["model_state"]` strictly; a mismatch is one line naming the first
    differing keys and shapes."""
    state = checkpoint["model_state"]
    if not isinstance(state, dict):
        raise UserError(f"{path}: model_state is not a state dict")
    problem = describe_mismatch(model.state_dict(), state)
    if problem:
        raise UserError(f"{path}: the checkpoint does not fit model {checkpoint.get('model')!r} "
                        f"({problem})")
    unusable = describe_non_finite(state)
    if unusable:
        raise UserError(f"{path}: checkpoint field model_state is not usable ({unusable}; was "
                        f"it edited, or saved by a run that diverged?)")
    model.load_state_dict(state)
