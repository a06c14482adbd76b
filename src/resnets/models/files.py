"""The files that hold weights: one safe reader for every torch file we load (a resnets
checkpoint, a state-dict file, a published release), and a resnets checkpoint's frame and the
fields that describe its model.

A torch file is read with `torch.load(weights_only=True)`: a file from a stranger can hold no
code that runs. What else a checkpoint holds (optimizer, progress, RNG) is training's and is
checked there (`resnets.train.state`); this module is the floor both the weights and the
training rooms stand on, so neither reads a file in a way of its own.
"""

from __future__ import annotations

import pickle
import re
import reprlib
from pathlib import Path
from typing import Any

import torch

from resnets.errors import UserError
from resnets.rundir import RunDir

FORMAT = "resnets-checkpoint"
VERSION = 1

# What a checkpoint must hold to rebuild its model.
MODEL_KEYS = ("model", "model_kwargs", "model_state", "config", "normalizer", "classes",
              "input_size")


def read_torch_file(path: str | Path, what: str = "weights",
                    map_location: str | torch.device = "cpu") -> Any:
    """What the torch file `path` holds, read with `weights_only=True`; a UserError naming
    `path` and `what` it was expected to be for a file that is not a torch file, or whose pickle
    holds anything but plain data (refused before any of it runs)."""
    path = Path(path)
    with open(path, "rb") as file:
        head = file.read(4)
    if head[:2] != b"PK" and head[:1] != b"\x80":  # neither torch's zip format nor a pickle
        raise UserError(f"{path}: not {what} (not a torch file)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise UserError(f"{path}: refused to load: it holds code or objects other than plain data "
                        f"(tensors, numbers, strings, lists, dicts){_refused_name(error)}, and "
                        f"loading those could run code; neither resnets checkpoints nor weights files "
                        f"hold them") from None
    except Exception as error:  # noqa: BLE001 - any other failure: not a torch file at all
        raise UserError(f"{path}: not {what} (cannot be read as a torch file: "
                        f"{type(error).__name__})") from None


def _refused_name(error: Exception) -> str:
    """What the pickle asked for (", e.g. posix.system"), from torch's message; never the rest
    of that message, whose advice (load with weights_only=False) would run the code."""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
    return f", e.g. {found.group(1)}" if found else ""


def resolve_checkpoint_path(path: str | Path) -> Path:
    """A checkpoint file, or the last checkpoint of a run directory."""
    path = Path(path)
    if path.is_dir():
        candidate, best = RunDir(path).last, RunDir(path).best
        if not candidate.is_file() and best.is_file():
            raise UserError(f"{path}: a run directory without {candidate.relative_to(path)} "
                            f"(its last checkpoint write failed?) but with "
                            f"{best.relative_to(path)}: give that file, {best}")
        if not candidate.is_file():
            raise UserError(f"{path}: a folder without {candidate.relative_to(path)} (not a "
                            f"run directory, or the run has not saved a checkpoint yet)")
        return candidate
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    return path


def check_checkpoint(state: Any, path: str | Path) -> dict:
    """`state`, read from `path`, if it is a resnets checkpoint this version understands;
    else a UserError."""
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path}: not a resnets checkpoint (a torch file without the "
                        f"{FORMAT!r} marker)")
    if state.get("version", 0) > VERSION:
        raise UserError(f"{path}: checkpoint version {state['version']} is newer than this "
                        f"resnets understands ({VERSION}); upgrade resnets")
    return state


def require(checkpoint: dict, keys: tuple[str, ...], path: str | Path) -> None:
    """A UserError naming what a (hand-edited or foreign) checkpoint lacks, or the first field
    describing its model whose value is of the wrong kind or contradicts another field."""
    missing = [key for key in keys if key not in checkpoint]
    if missing:
        raise UserError(f"{path}: checkpoint lacks {', '.join(missing)} (was it edited or "
                        f"written by another program?)")
    check_model_fields(checkpoint, path)


def refuse_field(checkpoint: dict, key: str, expected: str, path: str | Path):
    """The UserError for field `key` of an edited checkpoint."""
    return UserError(f"{path}: checkpoint field {key} is {reprlib.repr(checkpoint[key])}: "
                     f"expected {expected} (was it edited?)")


def is_count(value, low: int) -> bool:
    """`value` is an integer (not a bool) >= `low`."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def check_model_fields(checkpoint: dict, path: str | Path) -> None:
    """The kinds of the model's fields present in `checkpoint` and their agreement."""
    def wrong(key: str, fits) -> bool:
        return key in checkpoint and not fits(checkpoint[key])

    def refuse(key: str, expected: str):
        raise refuse_field(checkpoint, key, expected, path)

    if wrong("model", lambda v: isinstance(v, str)):
        refuse("model", "a model name")
    if wrong("model_kwargs", lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v)):
        refuse("model_kwargs", "a dict of keyword arguments")
    kwargs = checkpoint.get("model_kwargs", {})
    for key in ("config", "normalizer", "best"):
        if wrong(key, lambda v: isinstance(v, dict)):
            refuse(key, "a dict")
    if wrong("input_size", lambda v: isinstance(v, (list, tuple)) and len(v) == 3
             and all(is_count(x, 1) for x in v)):
        refuse("input_size", "[C, H, W], three positive integers")
    if wrong("input_size", lambda v: v[0] == kwargs.get("in_channels", v[0])):
        refuse("input_size", f"{kwargs['in_channels']} channels, as model_kwargs in_channels says")
    if wrong("classes", lambda v: isinstance(v, (list, tuple)) and len(v) > 0
             and all(isinstance(name, str) for name in v)):
        refuse("classes", "a list of class names")
    if wrong("classes", lambda v: len(v) == kwargs.get("num_classes", len(v))):
        refuse("classes", f"{kwargs['num_classes']} names, as model_kwargs num_classes says")
    if isinstance(checkpoint.get("normalizer"), dict):
        _check_normalizer_numbers(checkpoint["normalizer"], path)


def _check_normalizer_numbers(normalizer: dict, path: str | Path) -> None:
    """The normaliser's mean and std finite, and std > 0 (a std of 0 sends every image to the
    same answer)."""
    for key in ("mean", "std"):
        values = normalizer.get(key)
        if isinstance(values, torch.Tensor) and values.is_floating_point():
            if not torch.isfinite(values).all():
                first = values[~torch.isfinite(values)].flatten()[0].item()
                raise UserError(f"{path}: checkpoint field normalizer.{key} holds {first}: "
                                f"expected finite numbers (was it edited?)")
            if key == "std" and not (values > 0).all():
                raise UserError(f"{path}: checkpoint field normalizer.std holds "
                                f"{values[values <= 0].flatten()[0].item()}: expected numbers > 0 "
                                f"(a std of 0 sends every image to the same answer; was it "
                                f"edited?)")
