"""What a PATH is (a study, a run, several runs, a results folder), its page, and writing it.

The whole page is built in memory before anything is written, so bad input (a folder that is
none of these, an unfinished run, a torn metrics file) writes nothing; the file itself is
written atomically, so a reader never sees half a page.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

from resnets.atomic import write_text
from resnets.errors import UserError
from resnets.report.page import document, paragraph, section, text
from resnets.report.results import results_folder_page
from resnets.report.run import comparison, is_run, read_run, run_data, run_section
from resnets.report.study import is_study, study_page

PAGE_NAME = "report.html"  # the page's name inside a run or study directory


def _checked(paths: Sequence[str | Path]) -> list[Path]:
    paths = [Path(path) for path in paths]
    if not paths:
        raise UserError("report needs a run directory, a study directory or several runs")
    for path in paths:
        if not path.exists():
            raise UserError(f"{path} not found")
        if not path.is_dir():
            raise UserError(f"{path} is a file, not a run, study or results directory")
    return paths


def _one(path: Path) -> tuple[str, str, dict, int | None]:
    if is_study(path):
        return study_page(path)
    if is_run(path):
        files = read_run(path)
        return f"run {files.name}", run_section(files, level=1), {"kind": "run", "runs": [run_data(files)]}, None
    found = results_folder_page(path)
    if found is None:
        raise UserError(f"{path} is not a run directory (config.json and metrics.jsonl), a "
                        f"study directory (study.toml) or a lesion, landscape or diagnose "
                        f"output folder")
    title, body = found
    return title, f"<h1>{text(title)}</h1>" + body, {"kind": "results"}, None


def _several(paths: list[Path]) -> tuple[str, str, dict, int | None]:
    for path in paths:
        if is_study(path):
            raise UserError(f"{path} is a study directory: report a study on its own (several "
                            f"PATHs are runs to compare)")
    runs = [read_run(path) for path in paths]
    title = f"{len(runs)} runs compared"
    body = (f"<h1>{text(title)}</h1>"
            + paragraph(", ".join(str(path) for path in paths), "note")
            + comparison(runs)
            + section("Runs", "".join(run_section(files, level=3) for files in runs)))
    return title, body, {"kind": "runs", "runs": [run_data(files) for files in runs]}, None


def build_page(paths: Sequence[str | Path]) -> str:
    """The HTML page of one run, study or results folder, or of several runs compared."""
    import resnets

    paths = _checked(paths)
    title, body, data, reload_s = _one(paths[0]) if len(paths) == 1 else _several(paths)
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body += paragraph(f"Made by resnets {resnets.__version__} (`resnets report`) on {made}.",
                      "note")
    return document(title, body, data=data, reload_s=reload_s)


def default_out(paths: Sequence[str | Path]) -> Path:
    """report.html inside the one run or study directory; in the current folder for several."""
    return Path(paths[0]) / PAGE_NAME if len(paths) == 1 else Path(PAGE_NAME)


def write_page(paths: Sequence[str | Path], out: str | Path | None = None) -> Path:
    """Write the page of `paths` to `out` (default: `default_out`); returns its path."""
    paths = _checked(paths)
    out = Path(out) if out is not None else default_out(paths)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name, e.g. {out / PAGE_NAME}")
    return write_text(out, build_page(paths))


def refresh_study_page(study_dir: str | Path, log: Callable[[str], None]) -> Path | None:
    """Write (or rewrite) a study's page, as `resnets study` does after every run: a page that
    cannot be made is a warning on `log`, never the end of the study."""
    try:
        return write_page([study_dir])
    except Exception as error:  # noqa: BLE001 - the runs matter more than their page
        log(f"warning: {Path(study_dir) / PAGE_NAME} not written ({error})")
        return None
