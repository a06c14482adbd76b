"""The lesion and landscape studies' one door into training and data.

Both studies need the same three things from a run directory: the trained model, a fixed set
of its images as batches on the model's device, and the loss and error of a model over those
batches. They ask for them here and nowhere else, so a change to `resnets.train` or
`resnets.data` is answered in this file alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from resnets.errors import UserError, integer
from resnets.rundir import RunDir
from resnets.train.device import PRECISIONS as TRAINING_PRECISIONS

# What the studies accept: every precision but "auto", which would make results machine-dependent.
PRECISIONS = tuple(p for p in TRAINING_PRECISIONS if p != "auto")
Batches = list[tuple[torch.Tensor, torch.Tensor]]  # (images (B, C, H, W), labels (B,)) on the device


@dataclass
class TrainedRun:
    """A trained model with what describes it."""

    model: nn.Module      # eval mode, fp32, on `device`
    name: str             # the run directory's name (a lone checkpoint file's stem)
    run_dir: Path         # the run directory (the folder of a lone checkpoint file)
    model_name: str       # registry name, e.g. "resnet56"
    step: int             # training steps behind the weights
    classes: list[str]
    device: torch.device
    trained: object       # resnets.train.inference.Trained: read in this module only


def load_run(run_dir: str | Path, device: str = "cpu") -> TrainedRun:
    """The model of RUN_DIR/checkpoints/last.pt (or of a checkpoint file), in eval mode."""
    from resnets.train.inference import load_trained

    run_path, name = run_location(run_dir)
    trained = load_trained(run_dir, device=device)
    return TrainedRun(model=trained.model, name=name, run_dir=run_path,
                      model_name=str(trained.checkpoint.get("model", "?")),
                      step=int(trained.checkpoint.get("step", 0)),
                      classes=list(trained.classes), device=trained.device,
                      trained=trained)


def run_location(run_dir: str | Path) -> tuple[Path, str]:
    """(the run directory, its name) of RUN_DIR or of a checkpoint file, without loading it:
    a checkpoint in a run's checkpoints/ folder (best.pt) belongs to that run; one elsewhere
    is named after itself, its outputs beside it. A missing checkpoint is a UserError."""
    from resnets.train.checkpoint import resolve_checkpoint_path

    path = Path(run_dir)
    if path.is_dir():
        resolve_checkpoint_path(path)  # a folder without a checkpoint: one line now
        return path, path.resolve().name
    checkpoint = resolve_checkpoint_path(path)
    if RunDir(checkpoint.parent.parent).checkpoints == checkpoint.parent:  # best.pt
        return checkpoint.parent.parent, checkpoint.parent.parent.resolve().name
    return checkpoint.parent, checkpoint.stem


def fixed_batches(run: TrainedRun, split: str, *, images: int | None, seed: int,
                  batch_size: int) -> Batches:
    """`images` images of `split` (all of it for None), drawn with `seed`, as the run saw them at
    evaluation: its dataset settings and normalizer, no augmentation. The same arguments give
    the same images, in the same order, every time."""
    from resnets.data import Loader
    from resnets.train import default_parts

    dataset = default_parts().load_dataset(run.trained.config, split)
    if len(dataset) == 0:
        raise UserError(f"split {split!r} of {run.trained.config.data!r} is empty")
    seed = integer(seed, "seed (--seed)", low=0)
    if images is not None:
        images = integer(images, "images (--images)", low=1)
        if images < len(dataset):
            chosen = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
            dataset = dataset.subset(chosen[:images].sort().values, split)
    batch_size = integer(batch_size, "batch size (--batch-size)", low=1)
    loader = Loader(dataset, batch_size, shuffle=False, normalizer=run.trained.normalizer,
                    device=run.device, drop_last=False)
    return list(loader.batches(0))


def evaluate(model: nn.Module, batches: Batches, precision: str = "fp32") -> dict:
    """{"loss": mean cross-entropy, "err": top-1 error in percent, "n": images} in eval mode."""
    from resnets.train import evaluate as evaluate_model

    check_precision(precision)
    result = evaluate_model(model, batches, precision=precision)
    return {"loss": result["loss"], "err": result["err"], "n": result["n"]}


def seconds_per_image(model: nn.Module, batches: Batches, precision: str = "fp32") -> float:
    """The time one image of `batches` takes to evaluate, from one timed forward pass of the
    first batch (eval mode, no gradients): the basis of a measurement's estimate before its
    first evaluation. That pass also sets up the kernels, so the estimate errs long."""
    import time

    from resnets.train.steps import class_scores

    images = batches[0][0]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            started = time.perf_counter()
            class_scores(model, images, precision).cpu()  # waits for a GPU's work to end
            return (time.perf_counter() - started) / max(len(images), 1)
    finally:
        model.train(was_training)


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
