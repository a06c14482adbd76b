"""A run's part of a page: what was trained, where, its final table, its curves, its config,
and its lesion and landscape results when they are in the run directory.

Everything is read from the run directory's files (`RunDir`) with the functions that make the
terminal's table (`train.progress.summary_rows`) and the run's figures (`train.plots`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resnets.errors import UserError
from resnets.report.page import definitions, figure_block, figure_svg, paragraph, section, table
from resnets.report.results import LANDSCAPE_FILE, LESION_FILE, result_sections
from resnets.rundir import RunDir
from resnets.train.metrics import read_metrics
from resnets.train.plots import FIGURES, run_figure, run_label
from resnets.train.progress import summary_rows

NUMBERS = ("step", "epoch", "loss", "err", "err_top5", "lr", "img_s", "time")  # what is drawn


@dataclass
class RunFiles:
    """What a page shows of one run directory, read once."""

    run: RunDir
    name: str
    config: dict
    summary: dict | None  # None: not finished
    records: list
    classes: list | str  # the classes the model was trained on, or why they are not known

    @property
    def environment(self) -> dict:
        return self.config.get("environment") or {}


def is_run(path: Path) -> bool:
    run = RunDir(path)
    return run.exists() and run.config.is_file() and run.has_metrics()


def read_run(path: str | Path, *, finished: bool = True) -> RunFiles:
    """The run directory at `path`; a UserError if it is not one, or (with `finished`) if it
    is not finished, or if its files are not what training writes."""
    run = RunDir(path)
    if not is_run(run.path):
        raise UserError(f"{path} is not a run directory (no {run.config.name} and "
                        f"{run.metrics.name}) nor a study directory")
    if finished and not run.finished():
        raise UserError(f"{path} is an unfinished run (no {run.summary.name}); report it once "
                        f"it has finished (a study's page shows its unfinished runs)")
    config = run.read_config()
    if not isinstance(config, dict) or not isinstance(config.get("environment", {}), dict):
        raise UserError(f"{run.config} is not a config training wrote (not a JSON object)")
    summary = run.read_summary() if run.finished() else None
    # a finished run wrote whole lines; one still training may be mid-line
    records = read_metrics(run.metrics, complete=summary is not None)
    _check_records(records, run.metrics)
    if summary is not None:
        _check_summary(summary, run.summary)
    return RunFiles(run, run_label(run.path), config, summary, records, _classes(run))


def _classes(run: RunDir) -> list | str:
    """The class names the checkpoint holds (loaded with weights_only=True), or a reason."""
    from resnets.train.checkpoint import load_checkpoint
    from resnets.train.state import display_labels

    if not run.last.is_file():
        return "no checkpoint to read them from"
    try:
        checkpoint = load_checkpoint(run.last)
        return [str(name) for name in display_labels(checkpoint["classes"],
                                                     checkpoint.get("class_names"))]
    except (UserError, KeyError, TypeError) as error:
        return f"not read ({error})"


def _check_records(records: list, path: Path) -> None:
    for number, record in enumerate(records, 1):
        if not isinstance(record, dict) or not isinstance(record.get("split"), str):
            raise UserError(f"{path}: record {number} is not a metrics record (no split)")
        for key in NUMBERS:
            value = record.get(key)
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, (int, float))):
                raise UserError(f"{path}: record {number} has {key} = {value!r}, not a number")
        if record.get("step") is None:
            raise UserError(f"{path}: record {number} has no step")


def _check_summary(summary: Any, path: Path) -> None:
    try:
        summary_rows(summary)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise UserError(f"{path} is not a summary training wrote ({type(error).__name__}: "
                        f"{error})") from None


def what_rows(files: RunFiles) -> list[tuple[str, Any]]:
    config, summary = files.config, files.summary or {}
    model = config.get("model")
    params = summary.get("params")
    return [("run directory", str(files.run.path)),
            ("model", f"{model} ({params:,} parameters)" if isinstance(params, int) else model),
            ("model arguments", _value(config.get("model_args") or {})),
            ("weights", _value(config.get("weights")) or "random initialisation"),
            ("data", _value(config.get("data"))),
            ("classes", _classes_text(files.classes)),
            ("budget", _value({key: config.get(key) for key in ("iters", "epochs", "batch_size")
                               if config.get(key) is not None}))]


def _classes_text(classes: list | str, shown: int = 20) -> str:
    if isinstance(classes, str):
        return classes
    more = f", ... ({len(classes) - shown} more)" if len(classes) > shown else ""
    return f"{len(classes)}: {', '.join(classes[:shown])}{more}"


def _value(value: Any) -> str:
    """A config value as it reads in a table: JSON for lists and tables, plain otherwise."""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return "" if value is None else str(value)


def config_table(config: dict) -> str:
    rows = [(key, _value(value)) for key, value in config.items() if key != "environment"]
    return table(("setting", "value"), rows, numeric_from=99)


def curves(runs: list[tuple[str, list]], keys=("err", "loss")) -> str:
    """The run figures (train.plots.run_figure) of `keys`, as inline SVG."""
    blocks = []
    for key in keys:
        if any(record.get(key) is not None for _, records in runs for record in records):
            caption = f"{FIGURES[key][0]} against iterations" + (
                ": training dashed, validation thin, test bold" if key in ("err", "loss") else "")
            blocks.append(figure_block(figure_svg(run_figure(runs, key)), caption))
    return "".join(blocks)


def run_section(files: RunFiles, *, full: bool = True, level: int = 2) -> str:
    """One run: what, where, the final table, curves, config, lesion and landscape."""
    parts = [section("What was trained", definitions(what_rows(files)), level=level + 1),
             section("Where", definitions(files.environment.items()), level=level + 1)]
    if files.summary is not None:
        parts.append(section("Final figures", definitions(summary_rows(files.summary)),
                             level=level + 1))
    else:
        step = max((record["step"] for record in files.records), default=0)
        parts.append(paragraph(f"Training: step {step} so far (not finished).", "status"))
    keys = ("err", "loss", "lr", "img_s") if full else ("err", "loss")
    parts.append(section("Curves", curves([(files.name, files.records)], keys),
                         level=level + 1))
    parts.append(section("Resolved config", config_table(files.config), level=level + 1))
    parts += result_sections(files.run.path, level=level + 1)
    return section(f"Run {files.name}", "".join(parts), level=level,
                   anchor=f"run-{files.name}")


def run_data(files: RunFiles) -> dict:
    """The run's numbers as the page embeds them (for readers and scripts)."""
    return {"name": files.name, "summary": files.summary,
            "lesion": (files.run.path / LESION_FILE).is_file(),
            "landscape": (files.run.path / LANDSCAPE_FILE).is_file()}


def comparison(runs: list[RunFiles]) -> str:
    """Several runs side by side: the final table with a column per run, the curves overlaid,
    the settings in which they differ."""
    rows_per_run = [dict(summary_rows(files.summary)) for files in runs]
    labels = list(dict.fromkeys(label for rows in rows_per_run for label in rows))
    final = table(["", *(files.name for files in runs)],
                  [[label, *(rows.get(label, "") for rows in rows_per_run)]
                   for label in labels], numeric_from=99)
    keys = list(dict.fromkeys(key for files in runs for key in files.config
                              if key not in ("environment", "out", "name")))
    differ = [[key, *(_value(files.config.get(key)) for files in runs)] for key in keys
              if len({_value(files.config.get(key)) for files in runs}) > 1]
    parts = [section("Final figures", final),
             section("Curves", curves([(files.name, files.records) for files in runs],
                                      ("err", "loss", "lr", "img_s"))),
             section("Settings that differ",
                     table(["setting", *(files.name for files in runs)], differ,
                           numeric_from=99) if differ else paragraph("none"))]
    return "".join(parts)
