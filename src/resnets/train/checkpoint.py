"""Checkpoints: atomic writes, safe reads.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
`torch.load(weights_only=True)`: a checkpoint from a stranger can hold no code that runs.
Writes go to a temporary file in the same folder, are fsynced, then renamed over the old file,
so a crash mid-write leaves the previous checkpoint intact.

What the dict holds is written in one place, `resnets.train.state.TrainState`; this module
only frames it (a format marker and version) and moves it to and from disk. Reading goes
through `resnets.models.files`, the one reader of every torch file (weights read the same way).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from resnets.atomic import atomic_open
from resnets.errors import UserError
from resnets.models.files import FORMAT, VERSION, check_checkpoint, read_torch_file
from resnets.models.files import resolve_checkpoint_path

__all__ = ["FORMAT", "VERSION", "check_checkpoint", "load_checkpoint", "resolve_checkpoint_path",
           "rng_state", "save_checkpoint", "set_rng_state"]


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
    return check_checkpoint(read_torch_file(path, "a resnets checkpoint", map_location), path)


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
