"""A loader that keeps a whole split as one uint8 tensor on the training device.

Each epoch is a permutation drawn from a generator seeded with (seed, epoch); batch i of epoch
e gathers its images on the device, normalises them and augments the whole batch at once with
a generator seeded with (seed, e, i). So batch i of epoch e is a pure function of (seed, e, i),
and a run resumed at (e, i) sees exactly the batches an uninterrupted run would have seen.

An image folder too large for memory (`StreamingFolder`) goes through a torch DataLoader whose
workers decode the same batches of indices; normalisation and augmentation stay batched on the
device, with the same generators, so the batches are the same as if it had fitted in memory.
"""

from __future__ import annotations

import hashlib
import math
from typing import Iterator

import torch

from resnets.data.augment import pad_crop_flip
from resnets.data.normalize import Normalizer
from resnets.errors import UserError


def _generator(*key: int) -> torch.Generator:
    """A CPU generator seeded from a tuple of ints, identically on every machine and run."""
    digest = hashlib.sha256(",".join(str(int(k)) for k in key).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


class Loader:
    """Batches of (images float32 (B, C, H, W), labels int64 (B,)) on `device`.

    shuffle: a new permutation each epoch (else the dataset's order).
    pad: zero padding for the random crop (the paper: 4 on CIFAR); 0 turns cropping off.
    flip: random horizontal flips (the dataset's `default_flip` is the sensible choice).
    normalizer: applied before augmentation, so padding is zero in normalised units (the mean);
        None gives images / 255.
    drop_last: True drops the last partial batch of each epoch (every batch has `batch_size`
        images); False yields it, smaller.
    workers: DataLoader worker processes, used only for a dataset streamed from disk.
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        *,
        shuffle: bool,
        pad: int = 0,
        flip: bool = False,
        normalizer: Normalizer | None,
        device="cpu",
        seed: int = 0,
        drop_last: bool = True,
        channels_last: bool = False,
        workers: int = 2,
    ):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"batch_size {batch_size!r} is invalid: expected a positive integer")
        if not isinstance(pad, int) or pad < 0:
            raise UserError(f"pad {pad!r} is invalid: expected an integer >= 0")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.pad = pad
        self.flip = flip
        self.device = torch.device(device)
        self.seed = int(seed)
        self.drop_last = drop_last
        self.channels_last = channels_last
        self.workers = workers
        self.normalizer = (normalizer or Normalizer("none", torch.zeros(1, 1, 1), torch.full((1, 1, 1), 255.0)))
        self.normalizer = self.normalizer.to(self.device)
        self.streaming = not hasattr(dataset, "images")
        if not self.streaming:
            self.images = dataset.images.to(self.device)  # (N, C, H, W) uint8, resident
        self.labels = dataset.labels.to(self.device)

    def __len__(self) -> int:
        """Batches per epoch."""
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        """The batches of epoch 0 (what an evaluation loop, which never shuffles, wants)."""
        return self.batches(0)

    def order(self, epoch: int) -> torch.Tensor:
        """The epoch's image order, an int64 CPU tensor: a permutation seeded with (seed, epoch)."""
        n = len(self.dataset)
        if not self.shuffle:
            return torch.arange(n)
        return torch.randperm(n, generator=_generator(self.seed, epoch))

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches start, start+1, ... of `epoch`."""
        order = self.order(epoch)
        device_order = order.to(self.device)
        steps = range(start, len(self))
        slices = [slice(i * self.batch_size, (i + 1) * self.batch_size) for i in steps]
        if self.streaming:
            uint8_batches = self._stream([order[s] for s in slices])
        else:
            uint8_batches = (self.images[device_order[s]] for s in slices)  # gathered on the device
        for i, rows, images in zip(steps, slices, uint8_batches):
            images = images.to(self.device, non_blocking=True)  # (B, C, H, W) uint8
            yield self._finish(images, epoch, i), self.labels[device_order[rows]]

    def _finish(self, images: torch.Tensor, epoch: int, index: int) -> torch.Tensor:
        """Normalise and augment one uint8 batch (B, C, H, W) on the device."""
        images = self.normalizer(images)
        if self.pad or self.flip:
            images = pad_crop_flip(images, _generator(self.seed, epoch, index), self.pad, self.flip)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def _stream(self, index_batches: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        """uint8 batches decoded by DataLoader workers, in the order of `index_batches`."""
        from torch.utils.data import DataLoader

        loader = DataLoader(
            self.dataset,
            batch_sampler=[batch.tolist() for batch in index_batches],
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            collate_fn=_stack_images,
            persistent_workers=False,
        )
        try:
            yield from loader
        except UserError as error:  # raised in a worker: keep its one line, not the traceback
            from resnets.data.folder import worker_error

            raise worker_error(error) from None


def _stack_images(items: list) -> torch.Tensor:
    return torch.stack([image for image, _ in items])
