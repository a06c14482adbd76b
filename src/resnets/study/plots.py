"""The study's figures, drawn from numbers in files, never from models.

- `plot_figure6(rows, path)`: the paper's Figure 6 for a study (see `resnets.study.report`).
- `plot_diagnosis(result, out_dir)`: the three figures of `resnets diagnose`.
- `plot_lesion_units`, `plot_lesion_random`: Veit et al.'s Figures 3 and 5 for `resnets lesion`.
- `plot_landscape_1d`, `plot_landscape_2d`: Li et al.'s curves and contours for `resnets landscape`.
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
                axis.plot(*zip(*test), "-", linewidth=2.2, color=colour, label=f"{kind}-{row['depth']}",
                          marker="o" if len(test) == 1 else None)  # one evaluation: a dot
            finals += [v for v in (row["train_err_mean"], row["test_err_mean"]) if v is not None]
        axis.set_title(PANEL_TITLES.get(kind, kind))
        axis.set_xlabel("iterations")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8, title="bold: test, dashed: train", title_fontsize=8)
    axes[0].set_ylabel("error (%)")
    # Show the final-error region the comparison is about, not the first steps' ~90%.
    axes[0].set_ylim(0, min(100.0, max(5.0, 2.5 * max(finals, default=10.0))))
    return save_figure(figure, Path(path))


def plot_diagnosis(result: dict, out_dir: str | Path, suffix: str = ".png") -> list[Path]:
    """grad_norms.png, response_std.png (the paper's Figure 7) and identity.png (or .svg...:
    `suffix` is the format)."""
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
    paths.append(save_figure(figure, out_dir / f"grad_norms{suffix}"))

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
    paths.append(save_figure(figure, out_dir / f"response_std{suffix}"))

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
    paths.append(save_figure(figure, out_dir / f"identity{suffix}"))
    return paths


def _lesion_reference_lines(axis, result: dict) -> None:
    axis.axhline(result["baseline"]["err"], color="black", linestyle="--", linewidth=1,
                 label=f"no unit removed ({result['baseline']['err']:.2f}%)")
    axis.axhline(result["chance_err"], color="grey", linestyle=":", linewidth=1,
                 label=f"chance ({result['chance_err']:.0f}%)")


def plot_lesion_units(result: dict, path: str | Path) -> Path:
    """Veit et al.'s Figure 3: the error with each single unit removed, against the unit's
    position; units that change resolution drawn apart; units that cannot be removed marked."""
    units = result["units"]
    figure = Figure(figsize=(8, 4), layout="constrained")
    axis = figure.add_subplot()
    groups = (
        ("keeps its shape", [u for u in units if u["removable"] and not u["changes_shape"]], "o", _colours()[0]),
        ("changes resolution", [u for u in units if u["removable"] and u["changes_shape"]], "s", _colours()[3]),
    )
    for label, rows, marker, colour in groups:
        if rows:
            axis.plot([u["index"] + 1 for u in rows], [u["err"] for u in rows], marker,
                      color=colour, markersize=5, label=f"unit removed: {label}")
    fixed = [u for u in units if not u["removable"]]
    if fixed:
        axis.plot([u["index"] + 1 for u in fixed], [0.0] * len(fixed), "x", color="grey",
                  markersize=8, clip_on=False, label="cannot be removed (plain, changes shape)")
    _lesion_reference_lines(axis, result)
    for boundary in sorted({u["index"] for u in units if u["position"] == 0 and u["index"] > 0}):
        axis.axvline(boundary + 0.5, color="grey", linewidth=0.5, alpha=0.5)
    from matplotlib.ticker import MaxNLocator

    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlim(0.5, len(units) + 0.5)
    axis.set_ylim(0, 100)
    axis.set_xlabel("unit removed (forward order; thin lines: stage boundaries)")
    axis.set_ylabel(f"{result['split']} error (%)")
    axis.set_title(f"{result['run']}: one unit removed at a time ({result['images']} {result['split']} images"
                   + (", BN recalibrated" if result.get("recalibrate_bn") else "") + ")", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="center right")
    return save_figure(figure, Path(path))


def plot_lesion_random(result: dict, path: str | Path) -> Path:
    """Veit et al.'s Figure 5: the error with k random units removed, mean and standard
    deviation over the random subsets, k = 0 being the intact network."""
    curve = result["random"]
    figure = Figure(figsize=(6.5, 4), layout="constrained")
    axis = figure.add_subplot()
    ks = [0] + [row["k"] for row in curve]
    means = [result["baseline"]["err"]] + [row["err_mean"] for row in curve]
    stds = [0.0] + [row["err_std"] for row in curve]
    axis.errorbar(ks, means, yerr=stds, fmt="o-", markersize=4, capsize=3, color=_colours()[0],
                  label=f"mean and std over up to {result['subsets']} random subsets")
    _lesion_reference_lines(axis, result)
    from matplotlib.ticker import MaxNLocator

    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_ylim(0, 100)
    axis.set_xlabel("units removed (k)")
    axis.set_ylabel(f"{result['split']} error (%)")
    axis.set_title(f"{result['run']}: k random units removed", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="lower right")
    return save_figure(figure, Path(path))


def plot_landscape_1d(result: dict, path: str | Path) -> Path:
    """Loss (log scale) and error along one filter-normalised direction, one curve per run."""
    figure = Figure(figsize=(10, 4), layout="constrained")
    loss_axis, err_axis = figure.subplots(1, 2, sharex=True)
    for index, run in enumerate(result["runs"]):
        colour = _colours()[index % len(_colours())]
        loss_axis.plot(result["axis"], run["loss"], "-", color=colour, label=run["name"])
        err_axis.plot(result["axis"], run["err"], "-", color=colour, label=run["name"])
    loss_axis.set_yscale("log")
    loss_axis.set_ylabel("cross-entropy loss")
    err_axis.set_ylabel("error (%)")
    err_axis.set_ylim(0, 100)
    for axis in (loss_axis, err_axis):
        axis.set_xlabel("step along the direction (1 = each filter's own norm)")
        axis.axvline(0, color="grey", linewidth=0.5)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(f"Loss along a random filter-normalised direction (seed {result['seed']}, "
                    f"{result['images']} {result['split']} images)", fontsize=10)
    return save_figure(figure, Path(path))


def plot_landscape_2d(result: dict, path: str | Path) -> Path:
    """Li et al.'s contour plots: the loss over the plane of two filter-normalised directions,
    one panel per run, side by side, on one logarithmic colour scale."""
    import numpy as np
    from matplotlib.colors import LogNorm

    runs = result["runs"]
    grids = [np.asarray(run["loss"], dtype=float) for run in runs]  # (points, points): rows b, columns a
    finite = np.concatenate([g[np.isfinite(g) & (g > 0)] for g in grids])
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (1e-3, 1.0)
    high = max(high, low * 10)
    levels = np.geomspace(low, high, 31)
    values = np.asarray(result["axis"])
    figure = Figure(figsize=(4.2 * len(runs) + 1.2, 4), layout="constrained")
    axes = figure.subplots(1, len(runs), sharex=True, sharey=True, squeeze=False)[0]
    filled = None
    for axis, run, loss in zip(axes, runs, grids):
        loss = np.clip(np.nan_to_num(loss, nan=high, posinf=high), low, high)
        filled = axis.contourf(values, values, loss, levels=levels, norm=LogNorm(low, high), cmap="viridis")
        axis.contour(values, values, loss, levels=levels[::3], colors="white", linewidths=0.4, alpha=0.6)
        axis.plot([0], [0], "+", color="red", markersize=10)
        axis.set_title(f"{run['name']} (loss {run['origin']['loss']:.3g} at +)", fontsize=10)
        axis.set_xlabel("direction 1")
        axis.set_aspect("equal")
    axes[0].set_ylabel("direction 2")
    bar = figure.colorbar(filled, ax=list(axes), label="cross-entropy loss (log scale)")
    decades = range(int(np.ceil(np.log10(low))), int(np.floor(np.log10(high))) + 1)
    ticks = [low, *[10.0**d for d in decades if low * 1.5 < 10.0**d < high / 1.5], high]
    bar.set_ticks(ticks, labels=[f"{t:.3g}" for t in ticks])
    bar.minorticks_off()
    figure.suptitle(f"Loss around the trained weights, filter-normalised directions (seed "
                    f"{result['seed']}, {result['images']} {result['split']} images)", fontsize=10)
    return save_figure(figure, Path(path))
