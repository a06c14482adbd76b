"""Atomic file writes: a crash or Ctrl-C mid-write never leaves a half-written file.

Every file the project writes (checkpoints, metrics rewrites, JSON, TOML, figures, caches)
goes through `atomic_open`: the bytes go to a temporary file in the same folder, are fsynced,
then renamed over the target, so readers see the old file or the new one, never a mixture.
On any failure the temporary file is removed.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

from resnets.errors import UserError


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file for writing; on a clean exit it replaces `path`."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes only ('w' or 'wb'), got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary(path, os.getpid())
    try:
        with open(temporary, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _temporary(path: Path, pid: int | str) -> Path:
    return path.with_name(f".{path.name}.tmp-{pid}")


def remove_stale_temporaries(path: str | Path) -> None:
    """Delete the temporaries of `path` left by processes that no longer run (killed mid-write,
    where no cleanup could run): a large download's would otherwise stay for good."""
    path = Path(path)
    prefix = _temporary(path, "").name
    for temporary in path.parent.iterdir() if path.parent.is_dir() else ():
        pid = temporary.name[len(prefix):]
        if temporary.name.startswith(prefix) and pid.isdigit() and int(pid) != os.getpid() \
                and not _running(int(pid)):
            temporary.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    if os.name == "nt":  # os.kill there would end the process: assume it runs, keep its file
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:  # it exists but belongs to someone else
        return True
    return True


def writable_folder(folder: str | Path) -> Path:
    """`folder`, created if missing, once a file can be written in it; else a `UserError` naming
    the folder and the cause. Call it before slow work whose result will be written there."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):  # a real write: permissions, read-only mounts, ACLs
            pass
    except OSError as error:
        existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if existing is not None and not existing.is_dir():
            cause = f"{existing} is a file, not a folder"
        else:
            cause = error.strerror or str(error)
        raise UserError(f"cannot write in {folder} ({cause}): expected a folder you can write to") from None
    return folder


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not possible on every platform (Windows), hence optional.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_open(path, "w") as file:
        file.write(text)
    return Path(path)


def write_json(path: str | Path, data: Any) -> Path:
    """JSON with two-space indents and a final newline; NaN/inf written as JSON5-style tokens."""
    return write_text(path, json.dumps(data, indent=2, allow_nan=True) + "\n")
