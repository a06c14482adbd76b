"""TensorBoard event files beside metrics.jsonl (optional: pip install 'resnets[tensorboard]').

With `tensorboard = true` (`--tensorboard`) a run writes TensorBoard event files into its run
directory, so `tensorboard --logdir runs/` shows every run side by side:

    train/loss, train/error, train/lr, train/images_per_s   at every training line
    SPLIT/loss, SPLIT/error, SPLIT/error_top5               at every evaluation (val, test)
    SPLIT/misclassified                                     up to IMAGES misclassified images of
                                                            the split, and their true and
                                                            predicted classes as text

The x axis is the optimizer step, as in metrics.jsonl, which stays the record: the events are a
view of the same figures. A resumed run purges the events written after its checkpoint (as it
truncates metrics.jsonl), so a run's curves have no doubled stretch.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Callable

import torch

from resnets.errors import UserError

INSTALL = "pip install 'resnets[tensorboard]' (or pip install tensorboard)"
IMAGES = 8  # misclassified images kept per split and evaluation
FLUSH_S = 30  # events reach the disk at least this often while training


def available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def check_available() -> None:
    """A one-line UserError saying how to install TensorBoard, when it is not installed."""
    if not available():
        raise UserError(f"tensorboard = true (--tensorboard) needs TensorBoard: {INSTALL}")


class Board:
    """One run's TensorBoard writer; every method does nothing when TensorBoard is off."""

    def __init__(self, writer=None, normalizer=None, labels: list[str] | None = None):
        self.writer, self.normalizer, self.labels = writer, normalizer, labels or []

    @classmethod
    def open(cls, enabled: bool, folder: str | Path, step: int, normalizer,
             labels: list[str]) -> "Board":
        """A board writing into `folder` for a run at `step` (resumed from its checkpoint
        there: events an earlier process wrote after it are purged, as metrics.jsonl is
        truncated); a silent one unless `enabled`."""
        if not enabled:
            return cls()
        check_available()
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(folder), purge_step=step + 1 if step > 0 else None,
                               flush_secs=FLUSH_S)
        return cls(writer, normalizer, labels)

    def __enter__(self) -> "Board":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def train(self, record: dict[str, Any]) -> None:
        """A training line of metrics.jsonl: loss, error (%), lr and images/s."""
        if self.writer is None:
            return
        step = record["step"]
        for tag, key in (("loss", "loss"), ("error", "err"), ("lr", "lr"),
                         ("images_per_s", "img_s")):
            self.writer.add_scalar(f"train/{tag}", record[key], step)

    def collector(self) -> "Misclassified | None":
        """What to hand `evaluate(on_batch=...)` to keep a few misclassified images."""
        return None if self.writer is None else Misclassified(IMAGES)

    def evaluation(self, record: dict[str, Any], collected: "Misclassified | None") -> None:
        """An evaluation line of metrics.jsonl, and the misclassified images `collected`."""
        if self.writer is None:
            return
        split, step = record["split"], record["step"]
        for tag, key in (("loss", "loss"), ("error", "err"), ("error_top5", "err_top5")):
            self.writer.add_scalar(f"{split}/{tag}", record[key], step)
        if collected is not None and collected.images:
            pixels = self._pixels(torch.cat(collected.images))
            self.writer.add_images(f"{split}/misclassified", pixels, step, dataformats="NCHW")
            lines = [f"{k + 1}. {self._label(true)} -> {self._label(guess)}"
                     for k, (true, guess) in enumerate(collected.pairs)]
            self.writer.add_text(f"{split}/misclassified", "  \n".join(lines), step)
        self.writer.flush()

    def _label(self, index: int) -> str:
        return self.labels[index] if 0 <= index < len(self.labels) else str(index)

    def _pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Model inputs back to pictures: undo the normaliser, scale to [0, 1]."""
        mean = getattr(self.normalizer, "mean", None)
        std = getattr(self.normalizer, "std", None)
        if mean is not None and std is not None:
            images = images * std.float().cpu() + mean.float().cpu()
            return (images / 255).clamp(0, 1)
        low, high = images.min(), images.max()  # an unknown normaliser: stretch to [0, 1]
        return (images - low) / (high - low).clamp_min(1e-12)


class Misclassified:
    """`on_batch` for `evaluate`: keeps the first `limit` misclassified images (on the CPU)
    with their true and predicted classes."""

    def __init__(self, limit: int):
        self.limit = limit
        self.images: list[torch.Tensor] = []
        self.pairs: list[tuple[int, int]] = []

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor) -> None:
        room = self.limit - len(self.pairs)
        if room <= 0:
            return
        guesses = scores.argmax(dim=1)
        wrong = (guesses != labels).nonzero().flatten()[:room]
        if len(wrong) == 0:
            return
        chosen = images[wrong].float().cpu()
        if chosen.ndim == 5:  # several crops of each image: show the first
            chosen = chosen[:, 0]
        self.images.append(chosen.contiguous())
        self.pairs += list(zip(labels[wrong].tolist(), guesses[wrong].tolist()))


OnBatch = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]
