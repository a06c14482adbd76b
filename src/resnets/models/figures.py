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
from resnets.models.summary import model_info
from resnets.models.zoo import list_models

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


if __name__ == "__main__":
    for name, row in write_figures().items():
        print(f"{name:<22} {row['params']:>12,} {row['macs']:>16,}")
