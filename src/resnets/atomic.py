"""Atomic file writes: a crash or Ctrl-C mid-write never leaves a half-written file.

Every file the project writes (checkpoints, metrics rewrites, JSON, TOML, figures, caches)
goes through `atomic_open`: the bytes go to a temporary file in the same folder, are fsynced,
then renamed over the target, so readers see the old file or the new one, never a mixture.
On any failure the temporary file is removed.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file for writing; on a clean exit it replaces `path`."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes only ('w' or 'wb'), got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
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
