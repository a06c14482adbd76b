"""Run figures drawn from run directories' metrics.jsonl files (never from models).

`plot_runs(run_dirs, out_dir)` draws loss.png and error.png against iterations for one run or
an overlay: training dashed, validation and test solid (test bolder), one colour per run.
`run_figure(runs, key)` is one such figure (also of the learning rate or the throughput).
`save_figure` writes any matplotlib Figure atomically; the study's figures use it too.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from matplotlib.figure import Figure

from resnets.atomic import atomic_open, writable_folder
from resnets.errors import UserError
from resnets.rundir import RunDir
from resnets.train.metrics import read_metrics

# split -> matplotlib line style; training dashed, held-out splits solid (test bolder).
STYLES = {"train": {"linestyle": "--", "linewidth": 1.0, "alpha": 0.8},
          "val": {"linestyle": "-", "linewidth": 1.2},
          "test": {"linestyle": "-", "linewidth": 2.0}}


def run_label(run_dir: Path) -> str:
    return Path(run_dir).name


def plot_metric(ax, runs: Sequence[tuple[str, list[dict]]], key: str,
                splits: Sequence[str] = ("train", "val", "test")) -> None:
    """Draw `key` against step for each (label, records) run onto a matplotlib Axes.

    One run: a colour per split. Several runs: a colour per run, the split told by the line
    (training dashed, validation thin, test bold).
    """
    for number, (label, records) in enumerate(runs):
        for split_number, split in enumerate(splits):
            colour = f"C{split_number}" if len(runs) == 1 else f"C{number % 10}"
            points = [(r["step"], r[key]) for r in records
                      if r.get("split") == split and _point(r, key)]
            if not points:
                continue
            steps, values = zip(*points)
            marker = "o" if len(points) == 1 else None  # a lone evaluation is a point, not a line
            ax.plot(steps, values, color=colour, label=f"{label} {split}", marker=marker, **STYLES[split])
    ax.set_xlabel("iterations")
    ax.grid(True, alpha=0.3)
    if ax.lines:
        ax.legend(fontsize="small")


def plot_runs(run_dirs: Sequence[str | Path], out_dir: str | Path, *,
              labels: Sequence[str] | None = None) -> list[Path]:
    """Write loss.png and error.png for one run or an overlay of several; return the paths."""
    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise UserError("plot needs at least one run directory")
    if labels is not None and len(labels) != len(run_dirs):
        raise UserError(f"{len(labels)} labels for {len(run_dirs)} runs")
    for run_dir in run_dirs:
        if not RunDir(run_dir).has_metrics():
            raise UserError(f"not a run directory (no {RunDir(run_dir).metrics.name}): {run_dir}")
    runs = [(labels[i] if labels else run_label(d), read_metrics(d, require=True))
            for i, d in enumerate(run_dirs)]
    for run_dir, (_, records) in zip(run_dirs, runs):
        if not any(_point(r, key) for r in records for key in ("loss", "err")):
            raise UserError(f"{RunDir(run_dir).metrics}: no record with a step, a split and a "
                            f"finite loss or err: nothing to draw")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file; plots need a folder")
    writable_folder(out_dir)
    return [save_figure(run_figure(runs, key), out_dir / name) for name, key in
            (("loss.png", "loss"), ("error.png", "err"))]


# metrics key -> (y axis label, splits drawn): the figures a run's curves are drawn in.
FIGURES = {"loss": ("cross-entropy loss", ("train", "val", "test")),
           "err": ("top-1 error (%)", ("train", "val", "test")),
           "lr": ("learning rate", ("train",)),
           "img_s": ("training throughput (images/s)", ("train",))}


def run_figure(runs: Sequence[tuple[str, list[dict]]], key: str) -> Figure:
    """One figure of `key` (a FIGURES key) against iterations for (label, records) runs: the
    figure plot_runs saves, and the one `resnets report` shows."""
    ylabel, splits = FIGURES[key]
    # Fixed margins, not layout="constrained": its solver drew each figure twice, about a
    # third of a second of every training run's finish on a 2-core CPU (issue #24).
    figure = Figure(figsize=(7, 4.5))
    figure.subplots_adjust(left=0.11, right=0.98, bottom=0.11, top=0.93)
    ax = figure.add_subplot()
    plot_metric(ax, runs, key, splits)
    ax.set_ylabel(ylabel)
    if key == "loss":
        values = [r["loss"] for _, records in runs for r in records
                  if r.get("loss") is not None]
        if values and min(values) > 0:
            ax.set_yscale("log")
    ax.set_title(runs[0][0] if len(runs) == 1 else f"{len(runs)} runs")
    return figure


def _point(record: dict, key: str) -> bool:
    """Whether `record` gives a point of `key`: a numeric step, a split and a finite value."""
    value, step = record.get(key), record.get("step")
    return (isinstance(record.get("split"), str) and isinstance(step, (int, float))
            and isinstance(value, (int, float)) and math.isfinite(value))


def save_figure(figure: Figure, path: Path) -> Path:
    """Write a figure atomically, its format from the file's suffix."""
    with atomic_open(path, "wb") as file:
        figure.savefig(file, format=path.suffix.lstrip(".") or "png", dpi=120)
    return path
