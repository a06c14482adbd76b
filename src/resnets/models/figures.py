"""Measured parameters and multiply-adds of every registered model at its defaults, kept as data.

`resnets list` reads them from `figures.json` instead of building and running 38 networks
(resnet1202 alone takes seconds). The file is written by the code, never by hand:
`python -m resnets.models.figures` regenerates it, and a test checks every entry against a
fresh count.
"""

from __future__ import annotations

import json
from pathlib import Path

from resnets.atomic import write_text
from resnets.errors import UserError
from resnets.models.summary import human, model_info
from resnets.models.zoo import get_entry, list_models

FIGURES_FILE = Path(__file__).with_name("figures.json")


def measure(name: str) -> dict:
    """Params and multiply-adds of `name` at its defaults and the paper's input size."""
    info = model_info(name)
    return {"params": info["params"], "macs": info["macs"], "input_size": info["input_size"]}


def stored_figures() -> dict[str, dict]:
    """The figures file's contents: name -> {params, macs, input_size}."""
    return json.loads(FIGURES_FILE.read_text())


def write_figures(path: Path = FIGURES_FILE) -> dict[str, dict]:
    figures = {name: measure(name) for name in list_models()}
    write_text(path, json.dumps(figures, indent=1) + "\n")
    return figures


TABLE_HEADER = ("name", "family", "input", "params", "mult-adds", "paper error %")


def model_table(pattern: str = "*") -> list[tuple[str, ...]]:
    """One row of TABLE_HEADER per registered model matching `pattern`, from the stored
    figures (`figures.json`), so no model is built."""
    names = list_models(pattern)
    if not names:
        raise UserError(f"no model matches {pattern!r} (try `resnets list`)")
    figures = stored_figures()
    rows = []
    for name in names:
        entry, row = get_entry(name), figures[name]
        error = "" if entry.paper_error is None else f"{entry.paper_error:.2f}"
        size = "x".join(map(str, row["input_size"]))
        rows.append((name, entry.family, size, f"{row['params']:,}", human(row["macs"]), error))
    return rows


def format_model_table(rows: list[tuple[str, ...]], *, markdown: bool = False) -> str:
    """The rows of `model_table` as aligned text, or as a Markdown table."""
    if markdown:
        lines = ["| " + " | ".join(TABLE_HEADER) + " |",
                 "|" + "|".join(["---"] * 3 + ["---:"] * 3) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = (-22, -9, -10, 12, 10, 14)  # negative: left-aligned
    return "\n".join(" ".join(f"{cell:<{-w}}" if w < 0 else f"{cell:>{w}}"
                               for cell, w in zip(row, widths))
                      for row in [TABLE_HEADER, *rows])


if __name__ == "__main__":
    for name, row in write_figures().items():
        print(f"{name:<22} {row['params']:>12,} {row['macs']:>16,}")
