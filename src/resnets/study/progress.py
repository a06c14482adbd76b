"""A counter for long measurements (lesion evaluations, landscape grid points).

`counter(total, title, mode)` is a context manager yielding `advance(n=1)`: a live rich bar on a
terminal ("bar"), a plain line every few seconds and at the end otherwise ("lines"), or
nothing ("none"). "auto" picks "bar" when stderr is a terminal, else "lines". The display goes
to stderr, so a command's results on stdout stay clean.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from resnets.errors import UserError

MODES = ("auto", "bar", "lines", "none")
LINE_EVERY_S = 10.0  # seconds between two progress lines
# Evaluations one command runs at most: a 2-D landscape of 99 x 99 points, or a lesion study
# of thousands of subsets. At the 1-2 s an evaluation of 500 CIFAR images took on a shared
# 2-core CPU (docs/landscape.md: 225 in 7 minutes), about 3-6 hours; more is a typo more
# often than a plan, and never ends in a laptop's day.
MAX_EVALUATIONS = 10_000


def check_evaluations(count: int, what: str, remedy: str) -> None:
    """Refuse, before the first, a measurement of more than MAX_EVALUATIONS evaluations: one
    line saying how many (`what`: the flags that made the number) and what to change."""
    if count > MAX_EVALUATIONS:
        raise UserError(f"{what} is {count:,} evaluations, more than the {MAX_EVALUATIONS:,} "
                        f"one command runs; {remedy}")


def _duration(seconds: float) -> str:
    seconds = int(round(max(seconds, 0.0)))
    minutes, secs = divmod(seconds, 60)
    return f"{minutes}:{secs:02d}"


@contextmanager
def counter(total: int, title: str, mode: str = "auto", *, done: int = 0, stream=None,
            unit: str | None = None, seconds_each: float | None = None
            ) -> Iterator[Callable[[int], None]]:
    """Count `total` items of work, `done` of them finished before (a resumed scan). With
    `unit` ("evaluations of 500 images"), a line says before the first item how many are to
    do, and with `seconds_each` (an estimate of one item's time, from one timed batch) about
    how long they take; the "lines" display gives its measured estimate right after the first
    item."""
    if mode not in MODES:
        raise UserError(f"progress must be one of {', '.join(MODES)}, got {mode!r}")
    stream = stream or sys.stderr
    if mode == "auto":
        mode = "bar" if hasattr(stream, "isatty") and stream.isatty() else "lines"
    if unit is not None and mode != "none":
        about = (f", about {_duration((total - done) * seconds_each)} (from one timed batch)"
                 if seconds_each is not None else "")
        print(f"{title}: {total - done:,} {unit}" + (f" ({done:,} done before)" if done else "")
              + about, file=stream, flush=True)
    if mode == "none":
        yield lambda n=1: None
        return
    if mode == "bar":
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), TimeRemainingColumn(),
                      console=Console(file=stream), transient=False) as bar:
            task = bar.add_task(title, total=total, completed=done)
            yield lambda n=1: bar.advance(task, n)
        return

    state = {"count": done, "last": 0.0}
    started = time.perf_counter()

    def line() -> None:
        elapsed = time.perf_counter() - started
        new = state["count"] - done
        left = (total - state["count"]) * elapsed / new if new else float("nan")
        eta = _duration(left) if new else "?"
        print(f"{title}: {state['count']}/{total} ({_duration(elapsed)} elapsed, {eta} left)",
              file=stream, flush=True)
        state["last"] = time.perf_counter()

    def advance(n: int = 1) -> None:
        state["count"] += n
        first = unit is not None and state["count"] - n == done  # its pace: the estimate
        if (first or time.perf_counter() - state["last"] >= LINE_EVERY_S) \
                and state["count"] < total:
            line()

    state["last"] = time.perf_counter()
    try:
        yield advance
    finally:
        line()
