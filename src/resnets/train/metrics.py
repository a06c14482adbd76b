"""The metrics file, metrics.jsonl: one JSON object per event, the source of truth for plots,
reports and summaries.

Training lines: {"split": "train", "step", "epoch", "loss", "err", "lr", "img_s", "time"},
averaged over the steps since the previous training line (err in percent). Evaluation lines:
{"split": "val" | "test", "step", "epoch", "loss", "err", "err_top5", "time"}. `time` is
seconds since the run started, summed across resumes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from resnets.atomic import WriteError, write_text
from resnets.errors import UserError
from resnets.rundir import RunDir


class MetricsWriter:
    """Appends one JSON line per record and flushes it, so a crash loses at most one line.
    A failure to write (read-only folder, full disk) is a `WriteError` naming the file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
        except OSError as error:
            raise WriteError(error, self.path) from error

    def write(self, record: dict[str, Any]) -> None:
        try:
            self._file.write(json.dumps(record, allow_nan=True) + "\n")
            self._file.flush()
        except OSError as error:
            raise WriteError(error, self.path) from error

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_metrics(path: str | Path, *, complete: bool = False, require: bool = False
                 ) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl file (or of a run directory's). A torn last line
    (a crash mid-write) is skipped, unless `complete` (a finished run's file, which has none)
    asks for it to raise `UserError` too; any other bad line, and a line that is JSON but not
    an object, raises `UserError`. `require`: a file with no record at all is a `UserError`
    too (for readers that draw or report from it)."""
    path = Path(path)
    if path.is_dir():
        path = RunDir(path).metrics
    if not path.is_file():
        raise UserError(f"no metrics file: {path}")
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                if not complete:
                    break
                raise UserError(f"{path}:{number}: a torn last line (not a whole JSON "
                                f"record); the run did not finish writing it") from None
            raise UserError(f"{path}:{number}: not a JSON line") from None
        if not isinstance(record, dict):
            raise UserError(f"{path}:{number}: not a metrics record (expected a JSON object, "
                            f"as training writes, got {type(record).__name__})")
        records.append(record)
    if require and not records:
        raise UserError(f"{path}: no metrics record in it (empty, or only a line cut short): "
                        f"nothing to draw")
    return records


def truncate_metrics(path: str | Path, last_step: int) -> None:
    """Drop records after `last_step` (written after the checkpoint a run resumes from),
    rewriting the file atomically."""
    path = Path(path)
    if not path.is_file():
        return
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= last_step]
    write_text(path, "".join(json.dumps(record, allow_nan=True) + "\n" for record in kept))
