"""Lesion study (Veit et al. 2016): the test error of a trained network with units deleted.

Veit, Wilber and Belongie deleted single units from a trained ResNet-110 and the error barely
moved, except at the units that change resolution, while deleting one layer of a plain network
sent it to chance (their Figure 3); deleting k random units made the error grow smoothly with k
(Figure 5). Here:

- `units_removed(model, indices)`: a context manager inside which the model computes as if
  those units were deleted. A residual unit keeps only its shortcut (the unit's own
  `forward_without_branch`: `forward` with F(x) = 0); a plain unit whose input and output
  shapes match becomes the identity; a plain unit that changes shape cannot be removed. The
  model's weights and structure are never touched; on exit it is exactly as before.
- `lesion_model(model, batches)`: the baseline, every unit removed in turn, and k random units
  removed for k = 1, 2, ... (several distinct random subsets per k, seeded).
- `lesion(run_dir)`: the same on a trained run directory, with its own test images.
- `write_lesion(result, out_dir)`: lesion.json, units.csv, random.csv, units.png, random.png.

BatchNorm keeps the trained running statistics unless `recalibrate_bn` asks to re-estimate
them on training images for each lesioned network (which changes the answer: a network can
partly adapt to a deleted unit through its statistics).
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import random
import statistics
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch import nn

from resnets.atomic import writable_folder, write_json, write_text
from resnets.errors import UserError, integer
from resnets.study.progress import check_evaluations, counter
from resnets.study.trained import (Batches, check_precision, evaluate, fixed_batches, load_run,
                                   run_location, seconds_per_image)

DEFAULT_SUBSETS = 5  # random subsets per k: a 56-layer lesion study took 4 min 15 s on 2 shared cores (docs/lesion.md)


def units_of(model: nn.Module) -> list[nn.Module]:
    units = getattr(model, "units", None)
    if not units:
        raise UserError(f"{type(model).__name__} has no residual or plain units to remove")
    return list(units)


def removable(unit: nn.Module) -> bool:
    """A residual unit always (its shortcut remains); a plain unit only where it keeps the shape."""
    return bool(unit.residual or not unit.changes_shape)


def unit_table(model: nn.Module) -> list[dict]:
    """One row per unit, in forward order: index, name, stage (1-based), position in the stage,
    residual, changes_shape, removable."""
    names = {id(module): name for name, module in model.named_modules()}
    rows = []
    index = 0
    for stage_number, stage in enumerate(model.stages, 1):
        for position, unit in enumerate(stage):
            rows.append({"index": index, "name": names[id(unit)], "stage": stage_number,
                         "position": position, "residual": bool(unit.residual),
                         "changes_shape": bool(unit.changes_shape), "removable": removable(unit)})
            index += 1
    return rows


def unit_indices(model: nn.Module, units: int | str | Iterable[int | str]) -> list[int]:
    """The positions in `model.units` of `units`: indices (integers, as unit_table's "index")
    or names (as its "name" and the lesion CSV's: "layer1.0", "stages.0.3"), one or several;
    sorted, each once. A float, a bool or an unknown name is a UserError."""
    table = unit_table(model)
    by_name = {row["name"]: row["index"] for row in table}
    chosen = set()
    for unit in [units] if isinstance(units, (str, int)) else units:
        if isinstance(unit, str):
            if unit not in by_name:
                raise UserError(f"no unit named {unit!r}: the units are "
                                f"{', '.join(list(by_name)[:3])}, ... {table[-1]['name']} "
                                f"(or their indices 0..{len(table) - 1})")
            chosen.add(by_name[unit])
            continue
        index = integer(unit, "a unit index (or a unit's name)")
        if not 0 <= index < len(table):
            raise UserError(f"unit {index} does not exist: the model has units 0..{len(table) - 1}")
        chosen.add(index)
    return sorted(chosen)


@contextmanager
def units_removed(model: nn.Module, indices: int | str | Iterable[int | str]
                  ) -> Iterator[nn.Module]:
    """Inside the block, `model` computes as if the units at `indices` were deleted: positions
    in `model.units`, or the units' names as `unit_table` and the lesion CSV give them
    ("layer1.0"); see `unit_indices`. On exit every unit computes as before, even after an
    error."""
    units = units_of(model)
    chosen = unit_indices(model, indices)
    for index in chosen:
        if not removable(units[index]):
            raise UserError(f"unit {index} is a plain unit that changes shape: it cannot be removed")
    saved = {index: units[index].__dict__.get("forward") for index in chosen}
    try:
        for index in chosen:
            # An instance attribute shadows the class's forward for this module only.
            units[index].forward = units[index].forward_without_branch
        yield model
    finally:
        for index, previous in saved.items():
            units[index].__dict__.pop("forward", None)
            if previous is not None:
                units[index].forward = previous


_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@contextmanager
def recalibrated_bn(model: nn.Module, batches: Batches) -> Iterator[nn.Module]:
    """Inside the block, every BatchNorm layer uses statistics re-estimated on `batches` (an
    exact average over them, in fp32); on exit the trained statistics are back."""
    layers = [m for m in model.modules() if isinstance(m, _BATCH_NORMS) and m.track_running_stats]
    saved = [(m.momentum, {k: v.clone() for k, v in m.state_dict().items()
                           if k in ("running_mean", "running_var", "num_batches_tracked")})
             for m in layers]
    was_training = model.training
    try:
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None  # cumulative average: every batch counts the same
        model.train()
        with torch.no_grad():
            for images, _ in batches:
                model(images)
        model.eval()
        yield model
    finally:
        for layer, (momentum, state) in zip(layers, saved):
            layer.momentum = momentum
            layer.load_state_dict(state, strict=False)
        model.train(was_training)


def random_subsets(candidates: list[int], subsets: int, max_removed: int | None,
                   seed: int) -> dict[int, list[tuple[int, ...]]]:
    """For k = 1 .. max_removed (default: all candidates), `subsets` distinct random k-subsets
    of `candidates` (all of them where fewer exist), each sorted. A pure function of its
    arguments."""
    n = len(candidates)
    subsets = integer(subsets, "subsets (--subsets)", low=1)
    seed = integer(seed, "seed (--seed)")
    top = n if max_removed is None else integer(max_removed, "max_removed (--max-removed)")
    if not 1 <= top <= n:
        raise UserError(f"max_removed (--max-removed) must be between 1 and {n} (the removable "
                        f"units), got {top}")
    draws = sum(min(math.comb(n, k), subsets) for k in range(1, top + 1))
    check_evaluations(1 + n + draws, f"--subsets {subsets} up to --max-removed {top} "
                      f"({draws:,} random subsets, with the intact network and {n} units "
                      f"removed alone)", "use fewer --subsets or a smaller --max-removed")
    rng = random.Random(seed)
    plan = {}
    for k in range(1, top + 1):
        if math.comb(n, k) <= subsets:
            plan[k] = list(itertools.combinations(candidates, k))
            continue
        drawn: dict[tuple[int, ...], None] = {}  # insertion-ordered set
        while len(drawn) < subsets:
            drawn[tuple(sorted(rng.sample(candidates, k)))] = None
        plan[k] = list(drawn)
    return plan


def _spread(values: list[float]) -> dict:
    return {"err_mean": statistics.fmean(values),
            "err_std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "err_min": min(values), "err_max": max(values)}


def lesion_model(model: nn.Module, batches: Batches, *, subsets: int = DEFAULT_SUBSETS,
                 max_removed: int | None = None, seed: int = 0, precision: str = "fp32",
                 calibration: Batches | None = None, progress: str = "none",
                 title: str = "lesion") -> dict:
    """Loss and error (percent) over `batches`: with no unit removed, with each unit removed in
    turn, and with k random removable units removed (`subsets` distinct draws per k).

    calibration: training batches on which BN statistics are re-estimated for every network
        measured (the baseline too); None keeps the trained statistics.
    Returns {"baseline": {loss, err}, "units": [unit_table rows + loss, err, delta_err (None
    for a unit that cannot be removed)], "random": [{k, subsets: [[unit indices]], err: [..],
    loss: [..], err_mean, err_std, err_min, err_max, loss_mean}]}.
    """
    check_precision(precision)
    units = unit_table(model)
    candidates = [row["index"] for row in units if row["removable"]]
    plan = random_subsets(candidates, subsets, max_removed, seed)
    was_training = model.training
    model.eval()

    def measure(removed) -> dict:
        with units_removed(model, removed):
            with recalibrated_bn(model, calibration) if calibration else nullcontext():
                result = evaluate(model, batches, precision)
        return {"loss": result["loss"], "err": result["err"]}

    total = 1 + len(candidates) + sum(len(draws) for draws in plan.values())
    images_each = sum(len(y) for _, y in batches)
    # an evaluation, and the forward passes that re-estimate BN statistics before it
    passes = images_each + sum(len(y) for _, y in calibration or [])
    each = seconds_per_image(model, batches, precision) * passes if progress != "none" else None
    try:
        with counter(total, title, progress, unit=f"evaluations of {images_each:,} images",
                     seconds_each=each) as advance:
            baseline = measure([])
            advance()
            for row in units:
                measured = measure([row["index"]]) if row["removable"] else {"loss": None, "err": None}
                row.update(measured, delta_err=None if measured["err"] is None
                           else measured["err"] - baseline["err"])
                advance(int(row["removable"]))
            curve = []
            for k, draws in plan.items():
                results = []
                for draw in draws:
                    results.append(measure(draw))
                    advance()
                errors = [r["err"] for r in results]
                curve.append({"k": k, "subsets": [list(d) for d in draws], "err": errors,
                              "loss": [r["loss"] for r in results], **_spread(errors),
                              "loss_mean": statistics.fmean(r["loss"] for r in results)})
    finally:
        model.train(was_training)
    return {"baseline": baseline, "units": units, "random": curve}


def lesion(run_dir: str | Path, *, split: str = "test", images: int | None = None,
           subsets: int = DEFAULT_SUBSETS, max_removed: int | None = None,
           recalibrate_bn: bool = False, calibration_images: int = 1000, seed: int = 0,
           precision: str = "fp32", device: str = "cpu", batch_size: int = 500,
           progress: str = "none") -> dict:
    """The lesion study of a trained run directory (see the module docstring).

    split: the images the error is measured on (default: the test split, all of it, or
        `images` of them drawn with `seed`).
    subsets, max_removed, seed: random k-subsets per k, the largest k (default: every
        removable unit), the seed of the draws.
    recalibrate_bn: re-estimate BN statistics on `calibration_images` training images for
        every lesioned network (default: keep the trained statistics, as Veit et al.).
    Returns `lesion_model`'s numbers with what produced them (run, model, step, split, ...).
    """
    check_precision(precision)
    if max_removed is not None:
        integer(max_removed, "max_removed (--max-removed)", low=1)
    for value, what in ((subsets, "subsets (--subsets)"), (seed, "seed (--seed)"),
                        (images, "images (--images)"),
                        (calibration_images, "calibration_images (--calibration-images)")):
        if value is not None:
            integer(value, what, low=0 if what.startswith("seed") else 1)
    run = load_run(run_dir, device=device)
    batches = fixed_batches(run, split, images=images, seed=seed, batch_size=batch_size)
    calibration = (fixed_batches(run, "train", images=calibration_images, seed=seed,
                                 batch_size=batch_size) if recalibrate_bn else None)
    measured = lesion_model(run.model, batches, subsets=subsets, max_removed=max_removed,
                            seed=seed, precision=precision, calibration=calibration,
                            progress=progress, title=f"lesion {run.name}")
    classes = len(run.classes)
    return {"run": run.name, "run_dir": str(run.run_dir), "model": run.model_name,
            "step": run.step, "split": split, "images": sum(len(y) for _, y in batches),
            "subsets": subsets, "max_removed": max_removed, "seed": seed,
            "precision": precision, "recalibrate_bn": recalibrate_bn,
            "calibration_images": calibration_images if recalibrate_bn else None,
            "device": str(run.device), "chance_err": 100.0 * (1 - 1 / classes), **measured}


UNIT_COLUMNS = ("index", "name", "stage", "position", "residual", "changes_shape", "removable",
                "err", "loss", "delta_err")
RANDOM_COLUMNS = ("k", "subsets", "err_mean", "err_std", "err_min", "err_max", "loss_mean")


def _csv(rows: list[dict], columns: tuple[str, ...]) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        values = {**row, "subsets": len(row["subsets"])} if "subsets" in row else row
        writer.writerow(["" if values[c] is None else values[c] for c in columns])
    return text.getvalue()


def lesion_folder(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Where `write_lesion` of RUN_DIR's study goes: `out_dir`, by default RUN_DIR/lesion;
    checked writable (created, a file written and removed) before the study starts, so that
    minutes of measuring never end in a folder that cannot take the result."""
    return writable_folder(out_dir if out_dir is not None
                           else run_location(run_dir)[0] / "lesion")


def write_lesion(result: dict, out_dir: str | Path) -> list[Path]:
    """lesion.json (everything), units.csv, random.csv, units.png (Veit et al.'s Figure 3) and
    random.png (their Figure 5) under out_dir; returns the paths written. A folder that cannot
    be written is a UserError naming it."""
    from resnets.study.plots import plot_lesion_random, plot_lesion_units

    out = writable_folder(out_dir)
    return [write_json(out / "lesion.json", result),
            write_text(out / "units.csv", _csv(result["units"], UNIT_COLUMNS)),
            write_text(out / "random.csv", _csv(result["random"], RANDOM_COLUMNS)),
            plot_lesion_units(result, out / "units.png"),
            plot_lesion_random(result, out / "random.png")]
