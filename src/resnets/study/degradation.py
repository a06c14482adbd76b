"""The paper's central experiment: plain and residual twins trained at several depths.

A study (`spec.Study`: kinds, depths, seeds, preset, training overrides) is saved as
`studies/NAME/study.toml`. Each (kind, depth, seed) is an ordinary run directory under
`studies/NAME/runs/`, trained by `resnets.train.fit` with the same recipe and budget. Running a
study again skips finished runs (their `summary.json` exists) and resumes an unfinished one
from its last checkpoint, so a killed study loses at most the steps since that checkpoint.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Callable

from resnets.atomic import writable_folder, write_text
from resnets.errors import UserError
from resnets.rundir import RunDir
from resnets.study.spec import (Study, bundled_studies, default_study, read_study,  # noqa: F401
                                resolve_study, study_from_dict)

def run_dirs(study_dir: str | Path, study: Study) -> dict:
    """Each run of `study` with its run directory under `study_dir`."""
    return {run: RunDir(Path(study_dir) / "runs" / run.name) for run in study.runs()}


def prepare(study: Study, root: str | Path = "studies") -> Path:
    """Create (or reopen) the study directory. A saved study must match the one asked for,
    unless none of its runs finished: then the new definition replaces it (a first attempt
    that failed on a mistake can be rerun with the mistake fixed) and its unfinished runs are
    removed, since they were trained to the old definition."""
    study_dir = Path(root) / study.name
    saved_path = study_dir / "study.toml"
    if saved_path.is_file():
        saved = read_study(saved_path)
        if saved != study:
            started = run_dirs(study_dir, saved)
            if any(run.finished() for run in started.values()):
                raise UserError(
                    f"{study_dir} holds a different study ({saved_path}) with finished runs; "
                    f"choose another --name, or run `resnets study --name {study.name}` with no "
                    f"other settings to continue it")
            for run in started.values():
                if run.exists() and run.ours():
                    shutil.rmtree(run.path)
            write_text(saved_path, study.to_toml())
    else:
        write_text(saved_path, study.to_toml())
    writable_folder(study_dir / "runs")
    return study_dir


def run_study(
    study: Study,
    root: str | Path = "studies",
    *,
    progress: str = "auto",
    log: Callable[[str], None] | None = None,
) -> Path:
    """Train every unfinished run of `study`, then write its report. Returns the study dir."""
    from resnets.study.report import write_report
    from resnets.train import TrainingInterrupted, fit
    from resnets.train.compile import planned_runs
    from resnets.train.progress import format_duration

    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    study_dir = prepare(study, root)
    directories = run_dirs(study_dir, study)
    runs = list(directories)
    started = time.monotonic()
    trained_layers = 0  # layers x runs trained in this session, to estimate the time left
    for index, run in enumerate(runs, start=1):
        run_dir = directories[run]
        if run_dir.finished():
            log(f"[{index}/{len(runs)}] {run.name}: finished earlier, skipped")
            continue
        resume = run_dir.resumable()  # else fit starts afresh, even over a run that died early
        elapsed = time.monotonic() - started
        left = [r.depth for r in runs[index - 1 :] if not directories[r].finished()]
        estimate = f", about {format_duration(elapsed / trained_layers * sum(left))} left" if trained_layers else ""
        verb = "resuming" if resume else "training"
        log(f"[{index}/{len(runs)}] {verb} {run.name} (elapsed {format_duration(elapsed)}{estimate})")
        # The runs left, this one first: compile "auto" counts those that reuse its compiled
        # units (the same kind at any depth), which share its compile time.
        plan = [study.config_for(r).model for r in runs[index - 1:]
                if not directories[r].finished()]
        try:
            with planned_runs(plan):
                fit(study.config_for(run), run_dir.path, resume=resume, progress=progress)
        except TrainingInterrupted:
            raise TrainingInterrupted(
                f"study interrupted during {run.name} (run {index}/{len(runs)}); its checkpoint is "
                f"saved: run the same `resnets study` command again to continue") from None
        trained_layers += run.depth
    write_report(study_dir)
    log(f"study {study.name}: {len(runs)} runs in {study_dir}; report in {study_dir / 'report'}")
    return study_dir


