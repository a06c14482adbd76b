"""Checkpoints: atomic writes, safe reads.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
`torch.load(weights_only=True)`: a checkpoint from a stranger can hold no code that runs.
Writes go to a temporary file in the same folder, are fsynced, then renamed over the old file,
so a crash mid-write leaves the previous checkpoint intact.

What the dict holds is written in one place, `resnets.train.state.TrainState`; this module
only frames it (a format marker and version) and moves it to and from disk.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from resnets.atomic import atomic_open
from resnets.errors import UserError
from resnets.rundir import RunDir

FORMAT = "resnets-checkpoint"
VERSION = 1


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write `state` to `path` atomically (temporary file + fsync + rename).

    A failed write (full disk, file-size limit, read-only folder) raises `UserError` naming
    the path and the cause (`atomic_open`'s `WriteError` for what the OS reports), and leaves
    the previous file at `path` as it was.
    """
    try:
        with atomic_open(path, "wb") as file:
            torch.save({"format": FORMAT, "version": VERSION, **state}, file)
    except RuntimeError as error:  # torch's zip writer reports a short write this way
        if "unexpected pos" not in str(error) and "write" not in str(error).lower():
            raise
        raise UserError(f"cannot write {path}: the write stopped part-way (disk full or a "
                        f"file-size limit?); the previous checkpoint there is kept") from None
    return Path(path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a resnets checkpoint with `weights_only=True`.

    `path` may be a checkpoint file or a run directory (then `checkpoints/last.pt`). Raises
    `UserError` for a missing file, a file that is not a torch file, a file whose pickle holds
    anything but plain data (refused before any of it runs), or a torch file that is not ours.
    """
    path = resolve_checkpoint_path(path)
    with open(path, "rb") as file:
        head = file.read(4)
    if head[:2] != b"PK" and head[:1] != b"\x80":  # neither torch's zip format nor a pickle
        raise UserError(f"{path}: not a resnets checkpoint (not a torch file)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise UserError(f"{path}: refused to load: it holds code or objects other than plain data "
                        f"(tensors, numbers, strings, lists, dicts){_refused_name(error)}, and "
                        f"loading those could run code; resnets checkpoints never hold them") from None
    except Exception as error:  # any other failure: the file is not a torch file at all
        raise UserError(f"{path}: not a resnets checkpoint (cannot be read as a torch file: "
                        f"{type(error).__name__})") from None
    return check_checkpoint(state, path)


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


def _refused_name(error: Exception) -> str:
    """What the pickle asked for (", e.g. posix.system"), from torch's message; never the rest
    of that message, whose advice (load with weights_only=False) would run the code."""
    import re

    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
    return f", e.g. {found.group(1)}" if found else ""


def resolve_checkpoint_path(path: str | Path) -> Path:
    """A checkpoint file, or the last checkpoint of a run directory."""
    path = Path(path)
    if path.is_dir():
        candidate = RunDir(path).last
        if not candidate.is_file() and RunDir(path).best.is_file():
            raise UserError(f"{path}: a run directory without {candidate.relative_to(path)} "
                            f"(its last checkpoint write failed?) but with "
                            f"{RunDir(path).best.relative_to(path)}: give that file, "
                            f"{RunDir(path).best}")
        if not candidate.is_file():
            raise UserError(f"{path}: a folder without {candidate.relative_to(path)} (not a "
                            f"run directory, or the run has not saved a checkpoint yet)")
        return candidate
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    return path


def rng_state() -> dict[str, Any]:
    """Every global RNG state the training touches (torch CPU, and CUDA if present)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved (CUDA states only where CUDA is present)."""
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = [s.cpu() for s in state["cuda"]]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
