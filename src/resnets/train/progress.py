"""The progress display of a training run, and its final table.

`make_progress(mode)` gives a live rich bar on a terminal ("bar"), lines for logs, pipes and
dumb terminals ("lines": one per epoch, and at least one every `LINE_INTERVAL_S`), or nothing
("none"); "auto" picks the bar only on a terminal that can redraw a line. The loop calls
`start`, `train`, `evaluation`, `step`, `message` and `close`; what is shown is this module's
business alone.

Time left comes from `StepRate`, a moving average of the recent step rate, so slow first steps
(warm-up, compilation) or a burst of outside load fade out: a minute later they weigh 1/e^2.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Callable

from resnets.errors import UserError

MODES = ("auto", "bar", "lines", "none")
LINE_INTERVAL_S = 30.0  # lines mode prints at least this often, so a long epoch shows life
# Time constant of the moving averages behind the time left: a step's weight halves every
# ~21 s (30 * ln 2), so the estimate follows the rate of about the last minute.
RATE_TIME_CONSTANT_S = 30.0
BAR_WIDTH = (10, 40)  # the bar's narrowest and widest, in cells; text gets the rest
# The bar line's columns, left to right, and the order they are dropped in when the terminal
# is too narrow for all of them; the bar, the step count and the time left always stay.
BAR_COLUMNS = ("epoch", "bar", "steps", "train", "val", "rate", "elapsed", "left")
DROPPED_FIRST = ("elapsed", "rate", "val", "train", "epoch")


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _epochs(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


class StepRate:
    """Steps per second over the recent past: steps and seconds are each summed with weights
    that decay as exp(-age / RATE_TIME_CONSTANT_S), and the rate is their ratio. Early, slow
    steps fade out instead of weighing on the estimate for the whole run."""

    def __init__(self, step: int, now: float):
        self.step, self.time = step, now
        self.steps = self.seconds = 0.0  # the decayed sums

    def update(self, step: int, now: float) -> None:
        steps, seconds = step - self.step, now - self.time
        if steps <= 0 or seconds <= 0:
            return  # counted with the next update
        decay = math.exp(-seconds / RATE_TIME_CONSTANT_S)
        self.steps = self.steps * decay + steps
        self.seconds = self.seconds * decay + seconds
        self.step, self.time = step, now

    @property
    def per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else float("nan")

    def seconds_left(self, total_steps: int, now: float) -> float:
        """Time to reach total_steps at the recent rate, counting down since the last step;
        NaN before the first step."""
        if not self.seconds:
            return float("nan")
        return max(0.0, (total_steps - self.step) / self.per_second - (now - self.time))


def fit_columns(texts: dict[str, str], width: int) -> tuple[list[str], int]:
    """Which of BAR_COLUMNS fit in `width` cells, and the bar's width.

    texts: the text of each column but the bar (empty or absent: not shown yet). Columns are
    dropped in DROPPED_FIRST order until the rest, one space apart, leave the bar at least
    BAR_WIDTH[0] cells; the bar takes what is left, up to BAR_WIDTH[1].
    """
    shown = [name for name in BAR_COLUMNS if name == "bar" or texts.get(name)]

    def text_width(names):
        return sum(len(texts[name]) for name in names if name != "bar") + len(names) - 1

    for name in DROPPED_FIRST:
        if text_width(shown) + BAR_WIDTH[0] <= width:
            break
        if name in shown:
            shown.remove(name)
    return shown, max(1, min(BAR_WIDTH[1], width - text_width(shown)))


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
    """One line per epoch, and one at least every LINE_INTERVAL_S between (for logs, pipes and
    dumb terminals): the latest training figures and validation/test error, and the time.

    clock: seconds from an arbitrary origin (default time.monotonic); tests pass a fake one.
    """

    def __init__(self, stream=None, clock: Callable[[], float] = time.monotonic):
        self.stream = stream or sys.stdout
        self.clock = clock
        self.latest: dict[str, dict] = {}

    def start(self, total_steps, steps_per_epoch, start_step=0):
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
        self.started = self.printed = self.clock()
        self.rate = StepRate(start_step, self.started)

    def train(self, record):
        self.latest["train"] = record

    def evaluation(self, record):
        self.latest[record["split"]] = record

    def step(self, step):
        # Called after the step's training line and evaluations, so the line is complete.
        now = self.clock()
        self.rate.update(step, now)
        if step % self.steps_per_epoch == 0 or step == self.total_steps \
                or now - self.printed >= LINE_INTERVAL_S:
            self._print(step, now)

    def _print(self, step: int, now: float) -> None:
        self.printed = now
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
        left = self.rate.seconds_left(self.total_steps, now)
        parts.append(f"{format_duration(now - self.started)} elapsed, "
                     f"{format_duration(left)} left")
        print("  ".join(parts), file=self.stream, flush=True)

    def message(self, text):
        print(text, file=self.stream, flush=True)


class BarProgress(Progress):
    """A live rich bar that fits the terminal's width: the bar, step count and time left
    always; then, as room allows, epoch, loss and training error, validation error, lr and
    images/s, elapsed time (`fit_columns`).

    clock: seconds from an arbitrary origin (default time.monotonic); tests pass a fake one.
    """

    def __init__(self, console=None, clock: Callable[[], float] = time.monotonic):
        from rich.console import Console

        self.console = console or Console()
        self.clock = clock
        self.texts = {"train": "", "val": "", "rate": ""}

    def start(self, total_steps, steps_per_epoch, start_step=0):
        from rich.live import Live

        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
        self.total_epochs = total_steps / steps_per_epoch
        self.completed = start_step
        self.started = self.clock()
        self.rate = StepRate(start_step, self.started)
        self.live = Live(console=self.console, get_renderable=self._line, transient=False)
        self.live.start()

    def _columns(self) -> dict[str, str]:
        now = self.clock()
        epoch = self.completed / self.steps_per_epoch
        return {**self.texts, "epoch": f"epoch {epoch:.1f}/{_epochs(self.total_epochs)}",
                "steps": f"{self.completed}/{self.total_steps}",
                "elapsed": f"{format_duration(now - self.started)} elapsed",
                "left": f"{format_duration(self.rate.seconds_left(self.total_steps, now))} left"}

    def _line(self):
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        texts = self._columns()
        shown, bar_width = fit_columns(texts, self.console.width)
        line = Table.grid(padding=(0, 1, 0, 0))
        cells = []
        for name in shown:
            line.add_column(no_wrap=True)
            cells.append(ProgressBar(self.total_steps, self.completed, width=bar_width)
                         if name == "bar" else Text(texts[name]))
        line.add_row(*cells)
        return line

    def step(self, step):
        self.completed = step
        self.rate.update(step, self.clock())

    def train(self, record):
        self.texts.update(train=f"loss {record['loss']:.4f} err {record['err']:.2f}%",
                          rate=f"lr {record['lr']:.4g} {record['img_s']:.0f} img/s")

    def evaluation(self, record):
        # The validation error when there is one (the test error is for the end).
        if record["split"] == "val" or not self.texts["val"].startswith("val"):
            self.texts["val"] = f"{record['split']}_err {record['err']:.2f}%"

    def message(self, text):
        self.console.print(text, markup=False, highlight=False)

    def close(self):
        if getattr(self, "live", None) is not None:  # start may not have run
            self.live.stop()


def can_redraw(console) -> bool:
    """Whether a rich console can redraw a line in place: it writes to a TTY (FORCE_COLOR in
    a CI log does not make one) that rich treats as a terminal, and not a dumb one."""
    isatty = getattr(console.file, "isatty", None)
    try:
        tty = bool(isatty and isatty())
    except ValueError:  # a closed stream
        tty = False
    return tty and console.is_terminal and not console.is_dumb_terminal


def make_progress(mode: str = "auto", stream=None) -> Progress:
    """"auto": a live bar on a terminal that can redraw a line, lines otherwise (a pipe, a
    log, TERM=dumb); "bar" | "lines" | "none". stream: where to write (default stdout)."""
    if mode in ("auto", "bar"):
        from rich.console import Console

        console = Console(file=stream)
        if mode == "bar" or can_redraw(console):
            return BarProgress(console)
        mode = "lines"
    if mode == "lines":
        return LineProgress(stream)
    if mode == "none":
        return Progress()
    raise UserError(f"progress must be one of {', '.join(MODES)}, got {mode!r}")


def run_directory_line(run_dir: str | Path) -> str:
    """The line that says where a run was written (after its table, or alone)."""
    return f"run directory: {run_dir}"


def summary_rows(summary: dict) -> list[tuple[str, str]]:
    """The final figures of a run as (label, value) rows for a table. Errors are in percent;
    the test accuracy (100 - error) is shown too, the figure most readers look for."""
    final = summary.get("final", {})

    def pct(value):
        return "-" if value is None else f"{value:.2f}%"

    def accuracy(err):
        return None if err is None else 100.0 - err

    rows = [("model", f"{summary['model']} ({summary['params']:,} parameters)"),
            ("steps", f"{summary['steps']} ({summary['epochs']:.1f} epochs)"),
            ("time", f"{format_duration(summary['time_s'])} ({summary['img_s']:.0f} img/s)"),
            ("train loss / err", f"{final.get('train_loss', float('nan')):.4f} / "
                                 f"{pct(final.get('train_err'))}"),
            ("val err", pct(final.get("val_err"))),
            ("test err (top-1 / top-5)", f"{pct(final.get('test_err'))} / "
                                         f"{pct(final.get('test_err_top5'))}"),
            ("test accuracy (top-1 / top-5)", f"{pct(accuracy(final.get('test_err')))} / "
                                              f"{pct(accuracy(final.get('test_err_top5')))}")]
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
    console.print(run_directory_line(run_dir), soft_wrap=True)
