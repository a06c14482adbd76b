"""The run directory: the one definition of what a training run writes and where.

    runs/<name>/
      .resnets-run     marker: this folder was made by resnets (only such a folder is written
                       into or cleaned)
      .lock            held (flock) by the one process training the run, released by the OS
                       when it exits or dies
      config.json      resolved config, package/torch versions, git commit if any
      metrics.jsonl    one JSON object per event
      checkpoints/     last.pt, best.pt
      summary.json     final figures; its presence means the run is finished
      plots/           PNGs drawn from metrics.jsonl
      events.out.tfevents.*  TensorBoard event files (with --tensorboard): a view of metrics.jsonl

Everything else (training, studies, reports, plots, the CLI) asks a `RunDir` for these paths
and for the answers to "finished?", "resumable?", "empty?", "ours?".
"""

from __future__ import annotations

import json
import os
import re
import threading
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

from resnets.atomic import writable_folder, write_text
from resnets.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; a run directory is then not guarded
    fcntl = None

MARKER = ".resnets-run"
LOCK = ".lock"
NAME_DATA_CHARS = 40  # the dataset part of a default run name keeps its last 40 characters
_HELD: set = set()  # (thread, lock file) this process holds: `try_lock` inside it is a no-op


class RunDir:
    """A run directory (which need not exist yet) and the questions asked about it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------ the layout
    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    # ---------------------------------------------------------------- the questions
    def exists(self) -> bool:
        return self.path.is_dir()

    def ours(self) -> bool:
        """Made by resnets: it carries the marker (or, from before the marker, a config.json
        beside a checkpoints/ folder)."""
        return (self.path / MARKER).is_file() or (self.config.is_file()
                                                   and self.checkpoints.is_dir())

    def finished(self) -> bool:
        return self.summary.is_file()

    def resumable(self) -> bool:
        """Unfinished, with a checkpoint to continue from."""
        return not self.finished() and self.last.is_file()

    def has_metrics(self) -> bool:
        return self.metrics.is_file()

    def empty(self) -> bool:
        """Nothing in it but what `create` puts there (or it does not exist)."""
        if not self.path.exists():
            return True
        return not self.path.is_dir() or all(p.name in (MARKER, LOCK)
                                             for p in self.path.iterdir())

    def read_summary(self) -> dict[str, Any]:
        return _read_json(self.summary)

    def read_config(self) -> dict[str, Any]:
        """config.json as saved: the resolved config's fields and an "environment" entry."""
        return _read_json(self.config)

    # ---------------------------------------------------------------- making and owning
    def create(self) -> "RunDir":
        """Make the folder (and its parents) and mark it as ours. A folder that exists and is
        not ours, or a file at the path, is refused: its contents are someone else's. Several
        processes may create the same run directory at once (a study's shard workers): a
        folder made here appears with its marker already in it (`_make_marked`), so none of
        them ever sees another's half-made folder as someone else's."""
        if not self.path.exists():
            self._make_marked()
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"{self.path} is a file, not a run directory; choose another "
                            f"--name/--out")
        if not self.ours() and any(self.path.iterdir()):
            raise UserError(f"{self.path} is a folder resnets did not make (no {MARKER} "
                            f"marker); refusing to write into it: choose another --name/--out")
        writable_folder(self.path)
        if not (self.path / MARKER).is_file():  # an empty folder made by someone else
            write_text(self.path / MARKER, "")
        return self

    def _make_marked(self) -> None:
        """Make the folder with its marker in it: both are made under a temporary name beside
        it, then renamed into place in one step. Where another process made the folder first,
        the rename fails and theirs stands."""
        parent = writable_folder(self.path.parent)
        temporary = parent / f".{self.path.name}.tmp-{os.getpid()}-{threading.get_ident()}"
        try:
            temporary.mkdir()
            (temporary / MARKER).touch()
            os.rename(temporary, self.path)
        except OSError as error:
            if not self.path.exists():  # not a lost race: the folder cannot be made
                raise UserError(f"cannot create run directory {self.path}: "
                                f"{error.strerror}") from None
        finally:
            if temporary.exists():
                (temporary / MARKER).unlink(missing_ok=True)
                temporary.rmdir()

    @classmethod
    def claim_new(cls, parent: str | Path, base: str) -> "RunDir":
        """A new run directory `parent/base` (or `base-2`, `base-3`, ... if taken), created
        atomically, so that processes started at the same second never share one."""
        writable_folder(parent)
        for number in range(1, 10_000):
            path = Path(parent) / (base if number == 1 else f"{base}-{number}")
            try:
                os.mkdir(path)
            except FileExistsError:
                continue
            except OSError as error:
                raise UserError(f"cannot create run directory {path}: {error.strerror}") \
                    from None
            return cls(path).create()
        raise UserError(f"too many runs named {base}* in {parent}; give --name")

    @contextmanager
    def lock(self) -> Iterator["RunDir"]:
        """Hold the run directory for this process until the block ends (or the process dies).
        A run directory another live process holds is refused in one line."""
        with self.try_lock() as mine:
            if not mine:
                raise UserError(f"{self.path} is in use by another resnets process (a run is "
                                f"training there); wait for it, or use another --name")
            yield self

    @contextmanager
    def try_lock(self) -> Iterator[bool]:
        """Hold the run directory if no other process does: yields True while this process
        holds it (taken now, or already held by this thread further up: a study that claimed a
        run and then calls `fit`, which locks it too), False if another live process holds it.
        The folder must exist. Nothing is waited for, so a worker can skip to another run."""
        if fcntl is None:
            yield True
            return
        key = (threading.get_ident(), os.path.realpath(self.path / LOCK))
        if key in _HELD:  # flock would refuse this process's second open file of the lock
            yield True
            return
        try:
            handle = open(self.path / LOCK, "a")
        except OSError as error:
            raise UserError(f"cannot write in {self.path}: {error.strerror}") from None
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                mine = False
            else:
                mine = True
                _HELD.add(key)
            try:
                yield mine
            finally:
                _HELD.discard(key)
        finally:
            handle.close()  # closing releases the lock

    def held_elsewhere(self) -> bool:
        """Another live process holds the run directory now (it is training there)."""
        if not self.path.is_dir():
            return False
        with self.try_lock() as mine:
            return not mine

    def event_files(self) -> list[Path]:
        """The TensorBoard event files training wrote here (with --tensorboard)."""
        return sorted(self.path.glob("events.out.tfevents.*")) if self.path.is_dir() else []

    def clear_partial(self) -> None:
        """Remove what a run that died before its first checkpoint left (its metrics and
        TensorBoard events), so the run can start again. Only in a folder that is ours."""
        if not self.ours():
            raise UserError(f"{self.path} is not a resnets run directory; not clearing it")
        self.metrics.unlink(missing_ok=True)
        for path in self.event_files():
            path.unlink(missing_ok=True)

    def remove_empty(self) -> None:
        """Remove a run directory that holds nothing but its marker and lock (a run refused
        before it wrote anything)."""
        if self.ours() and self.empty():
            for name in (MARKER, LOCK):
                (self.path / name).unlink(missing_ok=True)
            self.path.rmdir()

    @staticmethod
    def default_name(model: str, data: str) -> str:
        """MODEL-DATA-YYYYmmdd-HHMMSS, with the dataset made safe for a folder name."""
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", data.replace("folder:", "folder-"))
        safe = safe.strip("-.") or "data"
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        return f"{model}-{safe[-NAME_DATA_CHARS:]}-{stamp}"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path} cannot be read ({type(error).__name__})") from None

