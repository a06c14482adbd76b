"""A study's page: Figure 6, Table 6, the degradation verdict, diagnostics, one section per run.

The figure and the table come from `study.report.collect` (the numbers of report/table.md and
report/summary.json), drawn by `study.plots.plot_figure6` and laid out by
`study.report.table_rows`; the verdict is read off the same rows.
"""

from __future__ import annotations

from pathlib import Path

from resnets.report.page import drawn_svg, figure_block, paragraph, section, table, text
from resnets.report.results import result_sections
from resnets.report.run import read_run, run_section
from resnets.study.plots import plot_figure6
from resnets.study.report import TABLE_HEADER, collect, table_rows

RELOAD_S = 30  # an unfinished study's page reloads itself this often
RESIDUAL_KINDS = ("resnet", "preact_resnet")


def is_study(path: Path) -> bool:
    return (Path(path) / "study.toml").is_file()


def _trend(kind: str, rows: list[dict]) -> tuple[float, str] | None:
    """(deep - shallow training error, the clause saying so) for one kind, from its shallowest
    and deepest rows with a training error; None with fewer than two depths."""
    rows = sorted((row for row in rows if row["kind"] == kind and row["train_err_mean"] is not None),
                  key=lambda row: row["depth"])
    if len(rows) < 2:
        return None
    shallow, deep = rows[0], rows[-1]
    a, b = round(deep["train_err_mean"], 2), round(shallow["train_err_mean"], 2)
    word = "worse than" if a > b else "better than" if a < b else "as well as"
    return a - b, (f"{kind}{deep['depth']} trains {word} {kind}{shallow['depth']}: "
                   f"{a:.2f}% vs {b:.2f}% training error")


def verdict(data: dict) -> str:
    """The degradation verdict in one sentence, from Table 6's rows (final training error,
    mean over seeds, of the shallowest and the deepest network of each kind)."""
    rows = data["rows"]
    kinds = list(dict.fromkeys(row["kind"] for row in rows))
    trends = {kind: trend for kind in kinds if (trend := _trend(kind, rows)) is not None}
    if not trends:
        return "No verdict yet: it needs the training error of two depths of one kind."
    plain = trends.get("plain")
    residual = [trends[kind] for kind in RESIDUAL_KINDS if kind in trends]
    lead = ""
    if plain is not None and plain[0] > 0:
        lead = ("Degradation: deeper plain networks train worse, deeper residual ones do not. "
                if residual and all(change <= 0 for change, _ in residual) else
                "Deeper networks train worse here, residual ones too. " if residual else "")
    elif plain is not None:
        lead = "No degradation in this study. "
    sentence = lead + "; ".join(clause for _, clause in trends.values()) + "."
    unfinished = sum(not run["finished"] for run in data["runs"])
    if unfinished:
        sentence += f" Provisional: {unfinished} of the runs shown are unfinished."
    return sentence


def study_page(study_dir: str | Path) -> tuple[str, str, dict, int | None]:
    """(title, body, data, reload seconds or None) of a study directory's page."""
    study_dir = Path(study_dir)
    data = collect(study_dir)
    study = data["study"]
    total = len(study["kinds"]) * len(study["depths"]) * len(study["seeds"])
    done = sum(run["finished"] for run in data["runs"])
    status = f"{done} of {total} runs finished"
    if done < total:
        status += (f"; the study is still running or was stopped (this page reloads itself "
                   f"every {RELOAD_S} s)")
    defined = (f"kinds {', '.join(map(str, study['kinds']))}; depths "
               f"{', '.join(map(str, study['depths']))}; seeds "
               f"{', '.join(map(str, study['seeds']))}; preset {study['preset']}; training "
               f"settings: " + (", ".join(f"{key} = {value}" for key, value
                                          in sorted(study["train"].items())) or "the preset's"))
    runs = [read_run(study_dir / run["run_dir"], finished=False) for run in data["runs"]]
    body = [f"<h1>Study {text(study['name'])}</h1>",
            paragraph(str(study_dir), "note"), paragraph(defined), paragraph(status, "status"),
            paragraph(verdict(data), "verdict"),
            section("Figure 6", figure_block(
                drawn_svg(plot_figure6, data["rows"]),
                "error against iterations, means over seeds: training dashed, test bold")),
            section("Table 6", table(TABLE_HEADER, table_rows(data))),
            *result_sections(study_dir),
            *(run_section(files, full=False) for files in runs)]
    summary = {**data, "rows": [{k: v for k, v in row.items() if k != "curves"}
                                for row in data["rows"]], "verdict": verdict(data)}
    return (f"study {study['name']}", "".join(body), {"kind": "study", **summary},
            None if done == total else RELOAD_S)
