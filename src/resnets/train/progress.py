"""The progress display of a training run, and its final table.

`make_progress(mode)` gives a live rich bar on a terminal ("bar"), one line per epoch for logs
and pipes ("lines"), or nothing ("none"); "auto" picks the bar on a terminal. The loop calls
`start`, `train`, `evaluation`, `step`, `message` and `close`; what is shown is this module's
business alone.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

from resnets.errors import UserError

MODES = ("auto", "bar", "lines", "none")


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _epochs(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


class Progress:
    """What the training loop reports to; the base class shows nothing."""

    def start(self, total_steps: int, steps_per_epoch: int, start_step: int = 0) -> None:
        pass

    def step(self, step: int) -> None:
        pass

    def train(self, record: dict) -> None:
        pass

    def evaluation(self, record: dict) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class LineProgress(Progress):
    """One line per epoch (for logs and pipes): the last training figures of the epoch and the
    latest validation/test error."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.latest: dict[str, dict] = {}

    def start(self, total_steps, steps_per_epoch, start_step=0):
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
        self.start_step = start_step
        self.started = time.perf_counter()

    def train(self, record):
        self.latest["train"] = record

    def evaluation(self, record):
        self.latest[record["split"]] = record

    def step(self, step):
        # Called after the step's training line and evaluations, so the line is complete.
        if step % self.steps_per_epoch == 0 or step == self.total_steps:
            self._print(step)

    def _print(self, step: int) -> None:
        train = self.latest.get("train", {})
        total_epochs = self.total_steps / self.steps_per_epoch
        parts = [f"epoch {step / self.steps_per_epoch:.1f}/{_epochs(total_epochs)}",
                 f"step {step}/{self.total_steps}"]
        if train:
            parts += [f"loss {train['loss']:.4f}", f"err {train['err']:.2f}%",
                      f"lr {train['lr']:.4g}", f"{train['img_s']:.0f} img/s"]
        for split in ("val", "test"):
            if split in self.latest:
                parts.append(f"{split}_err {self.latest[split]['err']:.2f}%")
        elapsed = time.perf_counter() - self.started
        done = step - self.start_step
        left = elapsed / done * (self.total_steps - step) if done else float("nan")
        parts.append(f"{format_duration(elapsed)} elapsed, {format_duration(left)} left")
        print("  ".join(parts), file=self.stream, flush=True)

    def message(self, text):
        print(text, file=self.stream, flush=True)


class BarProgress(Progress):
    """A live rich progress bar: epoch, step, loss, training error, lr, images/s, time left."""

    def __init__(self, console=None):
        from rich.console import Console

        self.console = console or Console()
        self.fields = {"epoch": "", "loss": "", "err": "", "lr": "", "img_s": "", "val": ""}

    def start(self, total_steps, steps_per_epoch, start_step=0):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress,
                                   TextColumn, TimeElapsedColumn, TimeRemainingColumn)

        self.steps_per_epoch = steps_per_epoch
        self.total_epochs = total_steps / steps_per_epoch
        self.bar = RichProgress(
            TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]} err {task.fields[err]} lr {task.fields[lr]}"
                       " {task.fields[img_s]} img/s {task.fields[val]}"),
            TimeElapsedColumn(), TextColumn("elapsed,"), TimeRemainingColumn(),
            TextColumn("left"),
            console=self.console, transient=False)
        self.bar.start()
        self.task = self.bar.add_task("train", total=total_steps, completed=start_step,
                                      **self.fields)
        self._set_epoch(start_step)

    def _set_epoch(self, step):
        self.fields["epoch"] = f"{step / self.steps_per_epoch:.1f}/{_epochs(self.total_epochs)}"

    def step(self, step):
        self._set_epoch(step)
        self.bar.update(self.task, completed=step, **self.fields)

    def train(self, record):
        self.fields.update(loss=f"{record['loss']:.4f}", err=f"{record['err']:.2f}%",
                           lr=f"{record['lr']:.4g}", img_s=f"{record['img_s']:.0f}")
        self.bar.update(self.task, **self.fields)

    def evaluation(self, record):
        # The validation error when there is one (the test error is for the end).
        if record["split"] == "val" or not self.fields["val"].startswith("val"):
            self.fields["val"] = f"{record['split']}_err {record['err']:.2f}%"
            self.bar.update(self.task, **self.fields)

    def message(self, text):
        self.bar.console.print(text)

    def close(self):
        self.bar.stop()


def make_progress(mode: str = "auto", stream=None) -> Progress:
    """"auto": a live bar when stdout is a terminal, one line per epoch otherwise;
    "bar" | "lines" | "none"."""
    if mode == "auto":
        stream_ = stream or sys.stdout
        mode = "bar" if hasattr(stream_, "isatty") and stream_.isatty() else "lines"
    if mode == "bar":
        return BarProgress()
    if mode == "lines":
        return LineProgress(stream)
    if mode == "none":
        return Progress()
    raise UserError(f"progress must be one of {', '.join(MODES)}, got {mode!r}")


def summary_rows(summary: dict) -> list[tuple[str, str]]:
    """The final figures of a run as (label, value) rows for a table."""
    final = summary.get("final", {})

    def pct(value):
        return "-" if value is None else f"{value:.2f}%"

    rows = [("model", f"{summary['model']} ({summary['params']:,} parameters)"),
            ("steps", f"{summary['steps']} ({summary['epochs']:.1f} epochs)"),
            ("time", f"{format_duration(summary['time_s'])} ({summary['img_s']:.0f} img/s)"),
            ("train loss / err", f"{final.get('train_loss', float('nan')):.4f} / "
                                 f"{pct(final.get('train_err'))}"),
            ("val err", pct(final.get("val_err"))),
            ("test err (top-1 / top-5)", f"{pct(final.get('test_err'))} / "
                                         f"{pct(final.get('test_err_top5'))}")]
    if summary.get("skipped_images"):
        rows.append(("skipped images", f"{summary['skipped_images']} unreadable"))
    best = summary.get("best") or {}
    if best.get("step") is not None:
        rows.append(("best", f"step {best['step']}: {best.get('split', 'val')} err "
                             f"{pct(best.get('val_err'))}"))
    return rows


def print_summary(summary: dict, run_dir: str | Path, console=None) -> None:
    """The final table and where the run was written."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title="run summary", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for label, value in summary_rows(summary):
        table.add_row(label, value)
    console.print(table)
    console.print(f"run directory: {run_dir}", soft_wrap=True)
