"""Loss landscapes (Li et al. 2018): the loss around a trained network along random directions.

Li, Xu, Taylor, Studer and Goldstein drew the loss of a trained network at theta + a d1 (+ b d2)
for random directions d1, d2 normalised filter by filter: each filter of d gets the norm of the
matching filter of theta, so a step of size 1 changes every filter by as much as it weighs,
whatever the scale BN leaves it at. ResNet-56 came out smooth and nearly convex; its plain twin
chaotic. Here:

- `filter_normalized(direction, weight)` and `random_directions(model, dims, seed)`: Gaussian
  directions from a seeded generator, filter-normalised; BN parameters and biases (every
  parameter with fewer than two dimensions) get no direction and stay fixed, as in Li et al.
- `scan(model, batches, directions, grid)`: loss and error at each grid point, skipping points
  already done, handing each finished point to a callback; the weights are restored exactly.
- `landscape(run_dirs)`: the same for trained run directories on a fixed subset of training
  images, resumable: with `out_dir`, each finished point is saved at once (atomically) in
  OUT/points/NAME.json and a rerun computes only the missing ones.
- `write_landscape(result, out_dir)`: landscape.json and the 1-D curves or 2-D contour plots.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from resnets.atomic import writable_folder, write_json
from resnets.errors import UserError, integer
from resnets.study.progress import MAX_EVALUATIONS, check_evaluations, counter
from resnets.study.trained import (Batches, check_precision, evaluate, fixed_batches, load_run,
                                   seconds_per_image)

DIMS = (1, 2)
# Defaults sized for a laptop: a 56-layer model's 2-D scan (15 x 15 = 225 evaluations of 500
# images) took 7 minutes on a shared 2-core CPU with one thread (docs/landscape.md).
DEFAULT_POINTS = {1: 41, 2: 15}  # grid points per direction
DEFAULT_SPAN = 1.0  # the grid covers [-span, span] on each axis, Li et al.'s range
DEFAULT_IMAGES = 500  # training images the loss is averaged over


class LandscapeInterrupted(KeyboardInterrupt):
    """Ctrl-C during a scan: the finished points are saved; `str(error)` says how to resume."""


def perturbed_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The parameters a direction moves: conv and linear weights (two or more dimensions).
    BN scales and shifts and biases stay fixed."""
    return [(name, p) for name, p in model.named_parameters() if p.dim() > 1]


def filter_normalized(direction: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`direction` rescaled filter by filter (along dim 0: a conv's output channels, a linear
    layer's output units) so that each filter's norm equals the matching filter's in `weight`."""
    d = direction.flatten(1)
    w = weight.detach().flatten(1).to(d.dtype)
    scale = w.norm(dim=1, keepdim=True) / (d.norm(dim=1, keepdim=True) + 1e-10)
    return (d * scale).view_as(direction)


def random_directions(model: nn.Module, dims: int, seed: int) -> list[list[torch.Tensor]]:
    """`dims` filter-normalised Gaussian directions, one tensor per `perturbed_parameters`
    entry, on the parameters' device. Drawn on the CPU from one generator seeded with `seed`,
    so the same seed gives the same directions on any machine, and the first of two
    directions is the 1-D direction."""
    if integer(dims, "dims (--dims)") not in DIMS:
        raise UserError(f"dims must be 1 or 2, got {dims!r}")
    generator = torch.Generator().manual_seed(integer(seed, "seed (--seed)", low=0))
    directions = []
    for _ in range(dims):
        direction = []
        for _, weight in perturbed_parameters(model):
            gaussian = torch.randn(weight.shape, generator=generator, dtype=torch.float32)
            direction.append(filter_normalized(gaussian, weight.cpu()).to(weight.device, weight.dtype))
        directions.append(direction)
    return directions


def axis(points: int, span: float) -> list[float]:
    """`points` (odd) evenly spaced values on [-span, span]; the middle one is exactly 0."""
    points = integer(points, "points (--points)", low=3)
    if points % 2 == 0:
        raise UserError(f"points must be odd, so that the trained weights (0, 0) are a grid "
                        f"point; got {points}")
    if not span > 0:
        raise UserError(f"span must be > 0, got {span!r}")
    return [span * (2 * i - (points - 1)) / (points - 1) for i in range(points)]


def grid(dims: int, points: int, span: float) -> list[tuple[str, tuple[float, ...]]]:
    """(key, coefficients) for every grid point, row by row: key "i" (1-D) or "i,j" (2-D), where
    i indexes the first direction and j the second."""
    values = axis(points, span)
    if dims == 1:
        return [(str(i), (a,)) for i, a in enumerate(values)]
    return [(f"{i},{j}", (a, b)) for j, b in enumerate(values) for i, a in enumerate(values)]


@torch.no_grad()
def scan(model: nn.Module, batches: Batches, directions: Sequence[Sequence[torch.Tensor]],
         points: Iterable[tuple[str, Sequence[float]]], *, precision: str = "fp32",
         done: dict | None = None, on_point: Callable[[str, dict], None] | None = None,
         advance: Callable[[int], None] = lambda n=1: None) -> dict[str, dict]:
    """Loss and error (percent) of `model` at theta + sum_k c_k d_k for every (key, c) in
    `points` whose key is not in `done`; returns every point's {"loss", "err"}, `done`'s too.

    `on_point(key, record)` is called as each point finishes (to save it). The weights are
    restored to theta exactly on return, on error and on Ctrl-C.
    """
    check_precision(precision)
    results = dict(done or {})
    weights = [p for _, p in perturbed_parameters(model)]
    theta = [p.detach().clone() for p in weights]
    try:
        for key, coefficients in points:
            if key in results:
                continue
            for weight, origin, *steps in zip(weights, theta, *directions):
                weight.copy_(origin)
                for coefficient, step in zip(coefficients, steps):
                    if coefficient:
                        weight.add_(step, alpha=coefficient)
            measured = evaluate(model, batches, precision)
            results[key] = {"loss": measured["loss"], "err": measured["err"]}
            if on_point is not None:
                on_point(key, results[key])
            advance(1)
    finally:
        for weight, origin in zip(weights, theta):
            weight.copy_(origin)
    return results


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 of the model's parameters and buffers: a resumed scan is of the same network."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class PointsFile:
    """OUT/points/NAME.json: a scan's settings and its finished points, rewritten atomically
    after every point, so an interrupted scan loses at most the point it was computing."""

    def __init__(self, path: Path, settings: dict):
        self.path, self.settings = path, settings
        self.points: dict[str, dict] = {}
        if path.is_file():
            try:
                saved = json.loads(path.read_text(encoding="utf-8"))
                saved_settings, points = saved["settings"], saved["points"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UserError(f"{path}: not a landscape points file; delete it or choose "
                                f"another --out") from None
            changed = [k for k in settings if saved_settings.get(k) != settings[k]]
            if changed:
                what = ", ".join(f"{k} {saved_settings.get(k)!r} -> {settings[k]!r}" for k in changed)
                raise UserError(f"{path} holds a scan with other settings ({what}); delete it "
                                f"or choose another --out")
            self.points = dict(points)

    def add(self, key: str, record: dict) -> None:
        self.points[key] = record
        write_json(self.path, {"settings": self.settings, "points": self.points})


def _unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return unique


def _as_grid(values: list[float], dims: int, points: int) -> list:
    """A flat list in `grid` order as a 1-D list, or rows (one per b, each over a)."""
    return values if dims == 1 else [values[j * points:(j + 1) * points] for j in range(points)]


def _counter(run, name: str, batches: Batches, total: int, done: int, progress: str,
             precision: str):
    """The progress counter of one run's scan; its first line gives the number of evaluations
    and about how long they take (one batch timed)."""
    images_each = sum(len(y) for _, y in batches)
    each = (seconds_per_image(run.model, batches, precision) * images_each
            if progress != "none" and done < total else None)
    return counter(total, f"landscape {name}", progress, done=done,
                   unit=f"evaluations of {images_each:,} images", seconds_each=each)


def landscape(run_dirs: Sequence[str | Path], *, dims: int = 1, points: int | None = None,
              span: float = DEFAULT_SPAN, images: int | None = DEFAULT_IMAGES, split: str = "train",
              seed: int = 0, precision: str = "fp32", device: str = "cpu",
              batch_size: int = 500, out_dir: str | Path | None = None,
              progress: str = "none") -> dict:
    """Loss and error of each trained run along `dims` random filter-normalised directions.

    Every run is measured on the same `images` images of `split` (drawn with `seed`; None: all
    of it) at the same grid of `points` per axis (default DEFAULT_POINTS[dims]) on [-span,
    span]; its directions come from `seed` too.
    With `out_dir`, finished points are saved in OUT/points/NAME.json as they are done and a
    rerun with the same settings resumes (a rerun with other settings is refused).

    Returns {dims, points, span, seed, images, split, precision, axis: [values], runs: [{name,
    run_dir, model, step, origin: {loss, err}, loss, err}]}, where loss and err are lists over
    the axis (1-D) or rows over the second direction, each over the first (2-D).
    """
    run_dirs = list(run_dirs)
    points = _check_settings(dims, points, span, precision, seed, images, batch_size,
                             len(run_dirs))
    values = axis(points, span)
    keys = grid(dims, points, span)
    if out_dir is not None:  # before any point is computed, not at the first save
        writable_folder(Path(out_dir) / "points")
    runs = [load_run(run_dir, device=device) for run_dir in run_dirs]  # all checked before any scan
    names = _unique_names([run.name for run in runs])
    settings = {"dims": dims, "points": points, "span": span, "seed": seed, "images": images,
                "split": split, "precision": precision}
    measured = []
    for run, name in zip(runs, names):
        batches = fixed_batches(run, split, images=images, seed=seed, batch_size=batch_size)
        store = None
        if out_dir is not None:
            store = PointsFile(Path(out_dir) / "points" / f"{name}.json",
                               {**settings, "model": run.model_name, "step": run.step,
                                "weights": weights_fingerprint(run.model)})
        done = store.points if store else {}
        directions = random_directions(run.model, dims, seed)
        try:
            with _counter(run, name, batches, len(keys), len(done), progress, precision) \
                    as advance:
                results = scan(run.model, batches, directions, keys, precision=precision,
                               done=done, on_point=store.add if store else None,
                               advance=advance)
        except KeyboardInterrupt:
            if store is None:
                raise
            raise LandscapeInterrupted(
                f"interrupted: {len(store.points)}/{len(keys)} points of {name} saved in "
                f"{store.path}; run the same command again to resume") from None
        origin = results[keys[len(keys) // 2][0]]
        measured.append({"name": name, "run_dir": str(run.run_dir), "model": run.model_name,
                         "step": run.step, "origin": origin,
                         "loss": _as_grid([results[k]["loss"] for k, _ in keys], dims, points),
                         "err": _as_grid([results[k]["err"] for k, _ in keys], dims, points)})
    return {**settings, "images": sum(len(y) for _, y in batches), "axis": values,
            "device": str(runs[0].device), "runs": measured}


def _check_settings(dims, points, span, precision, seed, images, batch_size, runs: int) -> int:
    """`landscape`'s arguments checked, before any run is read: the points per axis (its
    default for `dims` when None), refused where the grid is too large to finish."""
    if integer(dims, "dims (--dims)") not in DIMS:
        raise UserError(f"dims must be 1 or 2, got {dims!r}")
    check_precision(precision)
    integer(seed, "seed (--seed)", low=0)
    if images is not None:
        integer(images, "images (--images)", low=1)
    integer(batch_size, "batch size (--batch-size)", low=1)
    points = DEFAULT_POINTS[dims] if points is None else points
    axis(points, span)  # checked before its size is
    if not runs:
        raise UserError("landscape needs at least one run directory")
    _check_grid_size(points, dims, runs)
    return points


def _check_grid_size(points: int, dims: int, runs: int) -> None:
    """Refuse a grid of more evaluations than a command runs (points^dims per run)."""
    largest = 3
    while (largest + 2) ** dims * runs <= MAX_EVALUATIONS:
        largest += 2
    check_evaluations(points ** dims * runs,
                      f"--points {points} with --dims {dims} for {runs} run{'s' * (runs > 1)} "
                      f"({points}^{dims} grid points each)",
                      f"choose fewer --points (at most {largest} here)")


def write_landscape(result: dict, out_dir: str | Path) -> list[Path]:
    """landscape.json and landscape_1d.png (curves overlaid) or landscape_2d.png (contours side
    by side, one colour scale) under out_dir; returns the paths written."""
    from resnets.study.plots import plot_landscape_1d, plot_landscape_2d

    out = writable_folder(out_dir)  # a UserError naming it, not an OSError
    path = write_json(out / "landscape.json", result)
    if result["dims"] == 1:
        return [path, plot_landscape_1d(result, out / "landscape_1d.png")]
    return [path, plot_landscape_2d(result, out / "landscape_2d.png")]
