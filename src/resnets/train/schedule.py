"""The learning rate as a pure function of the step.

`lr_at(step, ...)` is the rate used for the optimizer update numbered `step` (0-based). Because
it depends on nothing but the step, a resumed run needs only the step to be back on schedule,
and the schedule can be plotted or tested without training anything.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable, Sequence

SCHEDULES = ("cosine", "linear", "step", "constant")
WARMUP_MODES = ("linear", "constant")


def lr_at(step: int, *, lr: float, total_steps: int, schedule: str = "cosine",
          milestones: Sequence[int] = (), gamma: float = 0.1, warmup: int = 0,
          warmup_mode: str = "linear", warmup_lr: float = 0.01) -> float:
    """Learning rate for the update at `step` (0-based) of a `total_steps`-long run.

    Warm-up (steps 0..warmup-1): "linear" ramps lr*(step+1)/warmup, reaching `lr` at its last
    step; "constant" holds `warmup_lr` (the paper's 0.01 for ResNet-110). From `warmup` on:
      cosine    lr * (1 + cos(pi * t)) / 2, t = (step - warmup) / (total_steps - warmup)
      linear    lr * (1 - t): with a linear warm-up, the one-cycle triangle of short
                recipes (airbench's), which spends less of a short run at a low rate
      step      lr * gamma ** (number of milestones <= step), milestones in steps; none given
                means 50% and 75% of total_steps
      constant  lr
    """
    if step < warmup:
        if warmup_mode == "linear":
            return lr * (step + 1) / warmup
        if warmup_mode == "constant":
            return warmup_lr
        raise ValueError(f"unknown warmup_mode {warmup_mode!r}")
    if schedule == "constant":
        return lr
    if schedule == "step":
        points = milestones or default_milestones(total_steps)
        return lr * gamma ** sum(1 for m in points if step >= m)
    if schedule in ("cosine", "linear"):
        span = max(total_steps - warmup, 1)
        progress = min((step - warmup) / span, 1.0)
        if schedule == "linear":
            return lr * (1.0 - progress)
        return lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule!r}")


def default_milestones(total_steps: int) -> list[int]:
    """Milestones at 50% and 75% of training (the paper's 32k/48k of 64k)."""
    return [total_steps // 2, total_steps * 3 // 4]


def peak_lr(config) -> float:
    """The learning rate a config trains at: `lr`, scaled linearly with the batch size when
    `lr_reference_batch` says which batch `lr` is for (torchvision's 0.1 x batch / 256)."""
    if getattr(config, "lr_reference_batch", None):
        return config.lr * config.batch_size / config.lr_reference_batch
    return config.lr


def config_milestones(config, steps_per_epoch: int | None) -> tuple[int, ...]:
    """The config's milestones in steps: `milestones`, or `milestone_epochs` times the epoch
    length (steps_per_epoch, needed then)."""
    epochs = getattr(config, "milestone_epochs", None)
    if not epochs:
        return tuple(config.milestones)
    if not steps_per_epoch:
        raise ValueError("milestone_epochs needs the number of steps per epoch")
    return tuple(round(epoch * steps_per_epoch) for epoch in epochs)


def schedule_from_config(config, total_steps: int, depth: int | None = None,
                         steps_per_epoch: int | None = None) -> Callable[[int], float]:
    """`lr_at` with the config's settings bound: a function of the step alone.

    The warm-up is dropped for models shallower than `warmup_min_depth` (the paper warms up
    only ResNet-110 and deeper); `depth` is the built model's (`model.depth`), None if unknown.
    `steps_per_epoch` turns `milestone_epochs` into steps.
    """
    warmup = config.warmup
    if config.warmup_min_depth and (depth is None or depth < config.warmup_min_depth):
        warmup = 0
    return partial(lr_at, lr=peak_lr(config), total_steps=total_steps, schedule=config.schedule,
                   milestones=config_milestones(config, steps_per_epoch), gamma=config.gamma,
                   warmup=warmup, warmup_mode=config.warmup_mode, warmup_lr=config.warmup_lr)
