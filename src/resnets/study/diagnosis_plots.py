"""Figures for `resnets diagnose`, drawn from the diagnosis dict (or its JSON) alone."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _save(figure, path: Path) -> Path:
    temporary = path.with_name(path.stem + ".tmp.png")
    figure.savefig(temporary, dpi=110, bbox_inches="tight")
    plt.close(figure)
    temporary.replace(path)
    return path


def plot_diagnosis(result: dict, out_dir: Path) -> list[Path]:
    """grad_norms.png, response_std.png (the paper's Figure 7), identity.png."""
    models = result["models"]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    paths = []

    figure, axis = plt.subplots(figsize=(8, 4.5))
    for index, (name, row) in enumerate(models.items()):
        colour = colours[index % len(colours)]
        layers = range(1, len(row["layers"]) + 1)
        axis.plot(layers, row["init"]["grad_norm"], "--", color=colour, label=f"{name}, initialisation")
        axis.plot(layers, row["trained"]["grad_norm"], "-", color=colour,
                  label=f"{name}, after {result['steps']} steps")
    axis.set_yscale("log")
    axis.set_xlabel("layer (stem conv = 1, fc = last)")
    axis.set_ylabel("gradient norm ||dL/dW||")
    axis.set_title("Gradient reaching each layer")
    axis.legend(fontsize=8)
    paths.append(_save(figure, out_dir / "grad_norms.png"))

    figure, (by_layer, by_size) = plt.subplots(2, 1, figsize=(8, 6.5))
    for index, (name, row) in enumerate(models.items()):
        colour = colours[index % len(colours)]
        stds = row["trained"]["response_std"]
        by_layer.plot(range(1, len(stds) + 1), stds, "-", color=colour, label=name)
        by_size.plot(range(1, len(stds) + 1), sorted(stds, reverse=True), "-", color=colour, label=name)
    by_layer.set_xlabel("layer index (original)")
    by_size.set_xlabel("layer index (sorted by magnitude)")
    for axis in (by_layer, by_size):
        axis.set_ylabel("std")
        axis.legend(fontsize=8)
    by_layer.set_title(f"Std of responses after BN, before nonlinearity/addition (after {result['steps']} steps)")
    paths.append(_save(figure, out_dir / "response_std.png"))

    figure, axis = plt.subplots(figsize=(8, 4))
    drawn = False
    for index, (name, row) in enumerate(models.items()):
        if not row["trained"]["identity_distance"]:
            continue
        colour = colours[index % len(colours)]
        units = range(1, len(row["trained"]["identity_distance"]) + 1)
        axis.plot(units, row["init"]["identity_distance"], "--", color=colour, label=f"{name}, initialisation")
        axis.plot(units, row["trained"]["identity_distance"], "-", color=colour,
                  label=f"{name}, after {result['steps']} steps")
        drawn = True
    axis.set_xlabel("residual unit")
    axis.set_ylabel("||F(x)|| / ||shortcut(x)||")
    axis.set_title("Distance of each residual unit from the identity")
    if drawn:
        axis.legend(fontsize=8)
    else:
        axis.text(0.5, 0.5, "no residual units (plain networks only)", ha="center", transform=axis.transAxes)
    paths.append(_save(figure, out_dir / "identity.png"))
    return paths
