"""Why residual networks train: gradient flow, layer responses, distance from the identity.

Three measurements, each a pure function of a model and a batch:

- `gradient_norms`: the norm of the loss gradient reaching each weighted layer (stem conv,
  every conv of every branch, fc), in forward order. Its first/last imbalance grows with depth
  far faster in plain networks than in their residual twins.
- `response_stds`: the standard deviation of each 3x3 layer's response after BN and before the
  nonlinearity or addition (the paper's Figure 7), in eval mode.
- `identity_distances`: for each residual unit, ||F(x)|| / ||shortcut(x)||, how far the unit is
  from the identity (0 = exactly the identity).

`diagnose` runs all three on named models, at initialisation and after k training steps, and
`write_diagnosis` saves the JSON and plots.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from resnets.atomic import writable_folder, write_json
from resnets.errors import UserError
from resnets.modes import eval_mode
from resnets.train.sgd import SGD
from resnets.train.steps import train_step


def weighted_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Conv and linear layers on the main path, in forward order (projection shortcuts excluded)."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear)) and ".downsample" not in name
    ]


def gradient_norms(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """||dL/dW|| for each weighted layer after one forward/backward in training mode.

    Leaves the model's gradients zeroed, its BN running statistics as they were.
    """
    saved = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    with eval_mode(model, training=True):
        model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        norms = {name: module.weight.grad.norm().item() for name, module in weighted_layers(model)}
        model.zero_grad(set_to_none=True)
        model.load_state_dict(saved, strict=False)
    return norms


def first_last_ratio(norms: dict[str, float]) -> float:
    """Gradient norm of the first conv over that of the last conv (fc excluded)."""
    convs = [value for name, value in norms.items() if name != "fc"]
    return convs[0] / convs[-1] if convs[-1] > 0 else math.inf


def _response_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.BatchNorm2d) and ".downsample" not in name and name != "bn_final"
    ]


@torch.no_grad()
def response_stds(model: nn.Module, images: torch.Tensor) -> dict[str, float]:
    """Std of each BN layer's output on `images`, in eval mode (the paper's Figure 7)."""
    stds: dict[str, float] = {}
    hooks = [
        module.register_forward_hook(lambda m, args, out, name=name: stds.__setitem__(name, out.float().std().item()))
        for name, module in _response_layers(model)
    ]
    try:
        with eval_mode(model):
            model(images)
    finally:
        for hook in hooks:
            hook.remove()
    return {name: stds[name] for name, _ in _response_layers(model) if name in stds}


@torch.no_grad()
def identity_distances(model: nn.Module, images: torch.Tensor) -> list[float]:
    """||F(x)|| / ||shortcut(x)|| for every residual unit, in eval mode; [] for a plain network."""
    units = [unit for unit in getattr(model, "units", []) if getattr(unit, "residual", False)]
    inputs: dict[int, torch.Tensor] = {}
    hooks = [
        unit.register_forward_pre_hook(lambda m, args, index=index: inputs.__setitem__(index, args[0].detach()))
        for index, unit in enumerate(units)
    ]
    try:
        with eval_mode(model):
            model(images)
            distances = []
            for index, unit in enumerate(units):
                x = inputs[index]
                skip = unit.shortcut(x).float()
                distances.append((unit.branch(x).float().norm() / skip.norm().clamp_min(1e-12)).item())
    finally:
        for hook in hooks:
            hook.remove()
    return distances


def measure(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """All three measurements on one batch."""
    norms = gradient_norms(model, images, labels)
    return {
        "layers": list(norms),
        "grad_norm": list(norms.values()),
        "first_last_ratio": first_last_ratio(norms),
        "response_std": list(response_stds(model, images).values()),
        "identity_distance": identity_distances(model, images),
    }


def train_steps(
    model: nn.Module,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    *,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
) -> list[float]:
    """k plain SGD steps (the paper's optimiser, constant lr, the training loop's own step);
    returns the losses."""
    optimizer = SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    model.train()
    return [train_step(model, optimizer, *next(batches))[0].item() for _ in range(steps)]


def diagnose(
    names: Iterable[str],
    *,
    data: str = "bundled",
    data_dir: str | None = None,
    steps: int = 50,
    batch_size: int = 128,
    lr: float = 0.1,
    seed: int = 0,
    threads: int | None = None,
) -> dict:
    """Measure each named model at initialisation and after `steps` SGD steps on `data`.

    Names are anything the registry resolves: registered names, and KIND+DEPTH for any valid
    depth (`plain74`, `resnet8`).

    Every model sees the same probe batch (the first `batch_size` test images, normalized with
    the training set's per-pixel mean) and the same sequence of training batches. threads: CPU
    threads for torch while measuring (None: as for training, `resolve_threads`).
    """
    from resnets.data import Loader, Normalizer, load
    from resnets.models import create_model
    from resnets.train.device import cpu_threads, resolve_threads

    names = list(names)
    check_settings(names, steps, batch_size, lr, seed)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise UserError(f"threads must be an integer >= 1, got {threads!r}")
    train = load(data, split="train", root=data_dir, seed=seed)
    test = load(data, split="test", root=data_dir, seed=seed)
    if batch_size > len(train):
        raise UserError(f"batch size {batch_size} is larger than the training set ({len(train)} "
                        f"images): no full batch can be drawn")
    normalizer = Normalizer.fit("pixel_mean", train.images)
    probe_images = normalizer(test.images[:batch_size])
    probe_labels = test.labels[:batch_size]
    channels, classes = train.images.shape[1], len(train.classes)

    # Batches are a pure function of (seed, epoch, index): every model sees the same sequence.
    loader = Loader(train, batch_size, shuffle=True, pad=2, normalizer=normalizer, device="cpu", seed=seed)
    results = {}
    with cpu_threads(resolve_threads(threads)):
        for name in names:
            results[name] = _diagnose_one(name, create_model, loader, probe_images, probe_labels,
                                          classes=classes, channels=channels, steps=steps, lr=lr,
                                          seed=seed)
    return {
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "data": data,
        "models": results,
    }


def _diagnose_one(name: str, create_model, loader, probe_images: torch.Tensor,
                  probe_labels: torch.Tensor, *, classes: int, channels: int, steps: int,
                  lr: float, seed: int) -> dict:
    """One model's entry of `diagnose`: measured at initialisation and after `steps` steps."""
    torch.manual_seed(seed)
    model = create_model(name, num_classes=classes, in_channels=channels)
    initial = measure(model, probe_images, probe_labels)
    losses = train_steps(model, _endless(loader), steps, lr=lr)
    trained = measure(model, probe_images, probe_labels)
    return {
        "depth": model.depth,
        "residual": any(unit.residual for unit in model.units),
        "layers": initial.pop("layers"),
        "init": initial,
        "trained": {**{k: v for k, v in trained.items() if k != "layers"}, "losses": losses},
    }


def check_settings(names: list[str], steps: int, batch_size: int, lr: float, seed: int) -> None:
    """Refuse bad settings of `diagnose` before any model is trained (a bad name fails now, not
    after the other models ran)."""
    from resnets.models import create_model
    from resnets.train.config import check_seed

    if not names:
        raise UserError("diagnose needs at least one model name")
    for name in names:
        with torch.device("meta"):
            create_model(name)
    if steps < 0 or batch_size < 2:
        raise UserError(f"steps must be >= 0 and batch size >= 2, got steps={steps}, batch size={batch_size}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise UserError(f"lr must be a positive number, got {lr!r}")
    check_seed("seed", seed)


def _endless(loader) -> Iterator:
    if len(loader) == 0:  # would spin for ever drawing empty epochs
        raise UserError("the loader yields no batch: the batch is larger than the dataset")
    epoch = 0
    while True:
        yield from loader.batches(epoch)
        epoch += 1


def write_diagnosis(result: dict, out_dir: str | Path) -> list[Path]:
    """Write diagnosis.json and the three plots under out_dir; returns the paths written."""
    from resnets.study.plots import plot_diagnosis

    out = writable_folder(out_dir)
    path = write_json(out / "diagnosis.json", result)
    return [path, *plot_diagnosis(result, out)]
