"""A training step and an evaluation, as pure as the loop needs them: `train_step` (forward
under autocast, cross-entropy in fp32, backward, SGD), `evaluate` (loss, top-1/top-5 and
per-class error of a loader), and what a dataset says about its images."""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from resnets.errors import UserError
from resnets.modes import eval_mode
from resnets.train.config import Config
from resnets.train.device import autocast
from resnets.train.sgd import SGD




def train_step(model: nn.Module, optimizer: SGD, images: torch.Tensor,
               labels: torch.Tensor, *, precision: str = "fp32", label_smoothing: float = 0.0
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step; returns (loss, number correct) as detached tensors (no device sync).
    The loss is cross-entropy against targets smoothed by `label_smoothing`."""
    with autocast(images.device, precision):
        logits = model(images)  # (B, classes)
    loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    correct = (logits.detach().argmax(dim=1) == labels).sum()
    return loss.detach(), correct


def class_scores(model: nn.Module, images: torch.Tensor, precision: str = "fp32"
                 ) -> torch.Tensor:
    """Scores (B, classes), fp32, whose softmax is the prediction: the logits of a batch
    (B, C, H, W); for several crops of each image (B, K, C, H, W), the log of the mean of the
    K crops' softmax (the paper's 10-crop testing averages the crops' scores), computed in log
    space (logsumexp of the log-probabilities minus log K): a class every crop gives a
    probability below fp32's smallest number keeps a finite log instead of log(0) = -inf."""
    if images.ndim == 5:
        batch, crops = images.shape[:2]
        with autocast(images.device, precision):
            logits = model(images.flatten(0, 1))  # (B * K, classes)
        log_probabilities = logits.float().log_softmax(dim=1).view(batch, crops, -1)
        return log_probabilities.logsumexp(dim=1) - math.log(crops)  # (B, classes)
    with autocast(images.device, precision):
        logits = model(images)  # (B, classes)
    return logits.float()


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, *, precision: str = "fp32",
             num_classes: int | None = None,
             combine: Callable[[torch.Tensor], torch.Tensor] | None = None,
             on_batch: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None
             ) -> dict[str, Any]:
    """Loss, top-1 and top-5 error (percent) and per-class top-1 error over `loader`.

    `loader` yields (images, labels) batches already on the model's device; images of shape
    (B, K, C, H, W) are K crops of each image, judged by their mean softmax (`class_scores`).
    per_class_err is a list indexed by class (None for a class with no images). The model is
    evaluated in eval mode and left in the mode it had. combine: sums the counts of several
    processes that each saw part of every batch (torchrun); it needs `num_classes`.
    `on_batch(images, labels, scores)` is called with every batch (TensorBoard keeps a few
    misclassified images this way).
    """
    totals = torch.zeros(4, dtype=torch.float64)  # loss sum, images, top-1 wrong, top-5 wrong
    class_total = class_wrong = None
    if num_classes is not None:
        class_total = torch.zeros(num_classes, dtype=torch.long)
        class_wrong = torch.zeros(num_classes, dtype=torch.long)
    with eval_mode(model):
        for images, labels in loader:
            if len(labels) == 0:  # this process's part of a last, small batch
                continue
            scores = class_scores(model, images, precision)  # (B, classes)
            if on_batch is not None:
                on_batch(images, labels, scores)
            if class_total is None or scores.shape[1] > len(class_total):
                grown = max(scores.shape[1], num_classes or 0)
                class_total = _grown(class_total, grown)
                class_wrong = _grown(class_wrong, grown)
            top = scores.topk(min(5, scores.shape[1]), dim=1).indices  # (B, k)
            hit1 = top[:, 0] == labels
            totals += torch.tensor([F.cross_entropy(scores, labels, reduction="sum").item(),
                                    len(labels), int((~hit1).sum()),
                                    int((~(top == labels[:, None]).any(dim=1)).sum())],
                                   dtype=torch.float64)
            labels_cpu = labels.cpu()
            class_total += torch.bincount(labels_cpu, minlength=len(class_total))
            class_wrong += torch.bincount(labels_cpu[~hit1.cpu()], minlength=len(class_total))
    if combine is not None:
        totals = combine(totals)
        class_total, class_wrong = combine(torch.stack([class_total, class_wrong]))
    loss_sum, count, wrong_top1, wrong_top5 = totals.tolist()
    if count == 0:
        raise UserError("nothing to evaluate: the split is empty")
    per_class = [None if int(t) == 0 else 100.0 * int(w) / int(t)
                 for w, t in zip(class_wrong, class_total)]
    return {"loss": loss_sum / count, "err": 100.0 * wrong_top1 / count,
            "err_top5": 100.0 * wrong_top5 / count, "per_class_err": per_class, "n": int(count)}


def _grown(counts: torch.Tensor | None, size: int) -> torch.Tensor:
    grown = torch.zeros(size, dtype=torch.long)
    if counts is not None:
        grown[:len(counts)] = counts
    return grown


def image_shape(dataset) -> list[int]:
    """[C, H, W] of a dataset's images (in memory, or streamed from disk)."""
    if hasattr(dataset, "images"):
        return list(dataset.images.shape[1:])
    if getattr(dataset, "image_shape", None) is not None:  # known without decoding a file
        return list(dataset.image_shape)
    return list(dataset[0][0].shape)


def augmentation(config: Config, dataset) -> tuple[int, bool]:
    """(pad, flip) for training on `dataset`: the config's where it sets them, else the
    dataset's own defaults (photos: pad 4 and flips; digits: pad 2, no flips), else none."""
    pad = config.pad if config.pad is not None else getattr(dataset, "default_pad", 0)
    flip = config.flip if config.flip is not None else getattr(dataset, "default_flip", False)
    return pad, flip
