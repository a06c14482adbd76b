"""Lesion, landscape and diagnosis results as parts of a page: their figures (drawn by
`study.plots`, the functions that draw their PNGs) and their tables (the columns of their CSV
files and terminal tables), read from the JSON files `resnets lesion`, `resnets landscape` and
`resnets diagnose` write.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from resnets.errors import UserError
from resnets.report.page import (drawn_svg, figure_block, paragraph, read_svg, section,
                                  svg_folder, table)

# where the commands write their results by default, relative to a run or study directory
LESION_FILE = Path("lesion") / "lesion.json"  # `resnets lesion RUN` -> RUN/lesion/
LANDSCAPE_FILE = Path("landscape") / "landscape.json"  # `resnets landscape ... --out RUN/landscape`
DIAGNOSIS_FILE = Path("diagnostics") / "diagnosis.json"  # `resnets diagnose --out STUDY/diagnostics`
RESULT_FILES = ("lesion.json", "landscape.json", "diagnosis.json")  # a results folder as PATH


def read_result(path: Path) -> dict:
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path} cannot be read ({type(error).__name__})") from None
    if not isinstance(result, dict):
        raise UserError(f"{path} is not a result resnets wrote (not a JSON object)")
    return result


def _built(path: Path, build: Callable[[dict, int], str], level: int) -> str:
    """`build(result, level)` for the result in `path`; a result file whose contents are not
    what the command writes is a UserError naming it, not a traceback."""
    result = read_result(path)
    try:
        return build(result, level)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as error:
        raise UserError(f"{path} is not a result resnets wrote ({type(error).__name__}: "
                        f"{error})") from None


def _cell(column: str, value) -> str:
    """A lesion CSV value as the terminal shows it: errors to 2 decimals, losses to 4."""
    if column == "subsets":
        return str(len(value))  # the CSV's column counts the subsets the JSON lists
    if isinstance(value, float):
        return f"{value:.4f}" if column.startswith("loss") else f"{value:.2f}"
    return str(value)


def lesion_section(result: dict, level: int = 2) -> str:
    from resnets.study.lesioning import RANDOM_COLUMNS  # (imports torch: only when needed)
    from resnets.study.plots import plot_lesion_random, plot_lesion_units

    base = result["baseline"]["err"]
    units = [[row["name"], "cannot be removed" if row["err"] is None else f"{row['err']:.2f}",
              "" if row["err"] is None else f"{row['delta_err']:+.2f}"]
             for row in result["units"]]
    random = [[_cell(column, row[column]) for column in RANDOM_COLUMNS]
              for row in result["random"]]
    body = [paragraph(f"{result['run']} ({result['model']}) on {result['images']} "
                      f"{result['split']} images: {base:.2f}% error with no unit removed."),
            figure_block(drawn_svg(plot_lesion_units, result),
                         "one unit removed at a time (Veit et al., Figure 3)"),
            table(("unit removed", "error %", "change"), units),
            figure_block(drawn_svg(plot_lesion_random, result),
                         "k random units removed (Veit et al., Figure 5)"),
            table(RANDOM_COLUMNS, random)]
    return section("Lesion study", "".join(body), level=level)


def landscape_section(result: dict, level: int = 2) -> str:
    from resnets.study.plots import plot_landscape_1d, plot_landscape_2d

    draw = plot_landscape_1d if result["dims"] == 1 else plot_landscape_2d
    rows = [[run["name"], run["model"], run["step"], f"{run['origin']['loss']:.4f}",
             f"{run['origin']['err']:.2f}"] for run in result["runs"]]
    body = [figure_block(drawn_svg(draw, result),
                         f"{result['dims']}-D loss landscape, {result['points']} points per "
                         f"direction on [-{result['span']}, {result['span']}] (Li et al.)"),
            table(("run", "model", "step", "loss at 0", "error % at 0"), rows, numeric_from=2)]
    return section("Loss landscape", "".join(body), level=level)


def diagnosis_section(result: dict, level: int = 2) -> str:
    from resnets.study.plots import plot_diagnosis

    with svg_folder() as folder:
        svgs = [read_svg(path) for path in plot_diagnosis(result, folder, suffix=".svg")]
    captions = ("gradient norm reaching each layer", "std of layer responses (Figure 7)",
                "distance of each residual unit from the identity")
    rows = [[name, f"{row['init']['first_last_ratio']:.3g}",
             f"{row['trained']['first_last_ratio']:.3g}"]
            for name, row in result["models"].items()]
    body = [table(("model", "gradient first/last, initialisation",
                   f"after {result['steps']} steps"), rows),
            *(figure_block(svg, caption) for svg, caption in zip(svgs, captions))]
    return section("Diagnostics", "".join(body), level=level)


SECTIONS = {"lesion.json": lesion_section, "landscape.json": landscape_section,
            "diagnosis.json": diagnosis_section}


def result_sections(folder: Path, level: int = 2) -> list[str]:
    """The sections of the results kept in a run or study directory, where present."""
    found = [(folder / LESION_FILE, lesion_section), (folder / LANDSCAPE_FILE, landscape_section),
             (folder / DIAGNOSIS_FILE, diagnosis_section)]
    return [_built(path, build, level) for path, build in found if path.is_file()]


def results_folder_page(folder: Path) -> tuple[str, str] | None:
    """(title, body) for a folder that holds a lesion, landscape or diagnosis result (a
    command's --out), or None if it holds none."""
    names = [name for name in RESULT_FILES if (folder / name).is_file()]
    if not names:
        return None
    body = "".join(_built(folder / name, lambda r, lv, n=name: SECTIONS[n](r, lv), 2)
                   for name in names)
    return f"{', '.join(Path(n).stem for n in names)}: {folder}", body
