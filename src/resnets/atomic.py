"""Atomic file writes: a crash or Ctrl-C mid-write never leaves a half-written file.

Every file the project writes (checkpoints, metrics rewrites, JSON, TOML, figures, caches)
goes through `atomic_open`: the bytes go to a temporary file in the same folder, are fsynced,
then renamed over the target, so readers see the old file or the new one, never a mixture.
On any failure the temporary file is removed, and a failure of the operating system (a
read-only folder, a full disk, a file where a folder should be) becomes a `WriteError` naming
the path and the cause: a `UserError` for the command line, and still an `OSError` (errno
kept) for code that handles one.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any, Iterator

from resnets.errors import UserError


class WriteError(OSError, UserError):
    """`path` could not be written: one line naming it and the cause. Also an `OSError` with
    the original errno, so code that handles a full disk or an unwritable cache still can."""

    def __init__(self, error: OSError, path: Path):
        super().__init__(error.errno, error.strerror, str(path))
        self.message = f"cannot write {path} ({_cause(error, path.parent)})"

    def __str__(self) -> str:
        return self.message


def _cause(error: OSError, folder: Path) -> str:
    """Why nothing can be written in `folder`: a file standing where it or a folder above it
    should be, else the system's words for `error` (Permission denied, No space left...)."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        return f"{existing} is a file, not a folder"
    return error.strerror or str(error)


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file for writing; on a clean exit it replaces `path`.

    An `OSError` of the writing (making the folder, opening, writing to the file, syncing,
    renaming) becomes a `WriteError` naming `path`; one that names another file, raised by the
    caller's own code in the block, passes unchanged. The temporary file never stays."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes only ('w' or 'wb'), got {mode!r}")
    path = Path(path)
    temporary = _temporary(path, os.getpid())
    in_block = False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as file:
            in_block = True
            yield file
            in_block = False
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        with suppress(OSError):  # e.g. ENOTDIR: then there is no temporary file either
            temporary.unlink(missing_ok=True)
        if isinstance(error, OSError) and not isinstance(error, WriteError) \
                and not (in_block and error.filename is not None):
            raise WriteError(error, path) from error
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
        raise UserError(f"cannot write in {folder} ({_cause(error, folder)}): expected a folder "
                        f"you can write to") from None
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
