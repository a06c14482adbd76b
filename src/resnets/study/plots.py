"""The study's figures, drawn from numbers in files, never from models.

- `plot_figure6(rows, path)`: the paper's Figure 6 for a study (see `resnets.study.report`).
- `plot_diagnosis(result, out_dir)`: the three figures of `resnets diagnose`.
Run figures (loss and error against iterations) are `resnets.train.plots.plot_runs`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from matplotlib.figure import Figure

from resnets.train.plots import save_figure


def _colours() -> list[str]:
    from matplotlib import rcParams

    return rcParams["axes.prop_cycle"].by_key()["color"]


PANEL_TITLES = {"plain": "plain networks", "resnet": "ResNets", "preact_resnet": "pre-activation ResNets"}


def plot_figure6(rows: Sequence[dict], path: str | Path) -> Path:
    """The paper's Figure 6: one panel per kind (plain left), error (%) against iterations,
    training error thin and dashed, test error bold, one colour per depth, shared axes.

    rows: dicts with kind, depth, train_err_mean, test_err_mean and curves {"train": [[step,
    err], ...], "test": [...]}, as `resnets.study.report.collect` makes them.
    """
    kinds = list(dict.fromkeys(row["kind"] for row in rows))
    depths = sorted({row["depth"] for row in rows})
    colour_of = {depth: _colours()[i % len(_colours())] for i, depth in enumerate(depths)}
    figure = Figure(figsize=(5.5 * len(kinds), 4.2), layout="constrained")
    axes = figure.subplots(1, len(kinds), sharex=True, sharey=True, squeeze=False)[0]
    finals = []
    for axis, kind in zip(axes, kinds):
        for row in (r for r in rows if r["kind"] == kind):
            colour = colour_of[row["depth"]]
            train, test = row["curves"]["train"], row["curves"]["test"]
            if train:
                axis.plot(*zip(*train), "--", linewidth=0.9, color=colour)
            if test:
                axis.plot(*zip(*test), "-", linewidth=2.2, color=colour, label=f"{kind}-{row['depth']}")
            finals += [v for v in (row["train_err_mean"], row["test_err_mean"]) if v is not None]
        axis.set_title(PANEL_TITLES.get(kind, kind))
        axis.set_xlabel("iterations")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8, title="bold: test, dashed: train", title_fontsize=8)
    axes[0].set_ylabel("error (%)")
    # Show the final-error region the comparison is about, not the first steps' ~90%.
    axes[0].set_ylim(0, min(100.0, max(5.0, 2.5 * max(finals, default=10.0))))
    return save_figure(figure, Path(path))


def plot_diagnosis(result: dict, out_dir: str | Path) -> list[Path]:
    """grad_norms.png, response_std.png (the paper's Figure 7) and identity.png."""
    out_dir = Path(out_dir)
    models, steps, colours = result["models"], result["steps"], _colours()
    paths = []

    figure = Figure(figsize=(8, 4.5), layout="constrained")
    axis = figure.add_subplot()
    for index, (name, row) in enumerate(models.items()):
        colour = colours[index % len(colours)]
        layers = range(1, len(row["layers"]) + 1)
        axis.plot(layers, row["init"]["grad_norm"], "--", color=colour, label=f"{name}, initialisation")
        axis.plot(layers, row["trained"]["grad_norm"], "-", color=colour, label=f"{name}, after {steps} steps")
    axis.set_yscale("log")
    axis.set_xlabel("layer (stem conv = 1, fc = last)")
    axis.set_ylabel("gradient norm ||dL/dW||")
    axis.set_title("Gradient reaching each layer")
    axis.legend(fontsize=8)
    paths.append(save_figure(figure, out_dir / "grad_norms.png"))

    figure = Figure(figsize=(8, 6.5), layout="constrained")
    by_layer, by_size = figure.subplots(2, 1)
    for index, (name, row) in enumerate(models.items()):
        colour = colours[index % len(colours)]
        stds = row["trained"]["response_std"]
        by_layer.plot(range(1, len(stds) + 1), stds, "-", color=colour, label=name)
        by_size.plot(range(1, len(stds) + 1), sorted(stds, reverse=True), "-", color=colour, label=name)
    by_layer.set_xlabel("layer index (original)")
    by_size.set_xlabel("layer index (sorted by magnitude)")
    for axis in (by_layer, by_size):
        axis.set_ylabel("std")
        axis.set_yscale("log")  # plain nets' responses can be orders of magnitude apart
        axis.legend(fontsize=8)
    by_layer.set_title(f"Std of responses after BN, before nonlinearity/addition (after {steps} steps)")
    paths.append(save_figure(figure, out_dir / "response_std.png"))

    figure = Figure(figsize=(8, 4), layout="constrained")
    axis = figure.add_subplot()
    residual = [(i, name, row) for i, (name, row) in enumerate(models.items()) if row["trained"]["identity_distance"]]
    for index, name, row in residual:
        colour = colours[index % len(colours)]
        units = range(1, len(row["trained"]["identity_distance"]) + 1)
        axis.plot(units, row["init"]["identity_distance"], "--", color=colour, label=f"{name}, initialisation")
        axis.plot(units, row["trained"]["identity_distance"], "-", color=colour, label=f"{name}, after {steps} steps")
    axis.set_xlabel("residual unit")
    axis.set_ylabel("||F(x)|| / ||shortcut(x)||")
    axis.set_title("Distance of each residual unit from the identity")
    if residual:
        axis.legend(fontsize=8)
    else:
        axis.text(0.5, 0.5, "no residual units (plain networks only)", ha="center", transform=axis.transAxes)
    paths.append(save_figure(figure, out_dir / "identity.png"))
    return paths
