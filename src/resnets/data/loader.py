"""A loader that keeps a whole split as one uint8 tensor on the training device.

Each epoch is a permutation drawn from a generator seeded with (seed, epoch); batch i of epoch
e gathers its images on the device, normalises them and augments the whole batch at once with
a generator seeded with (seed, e, i). So batch i of epoch e is a pure function of (seed, e, i),
and a run resumed at (e, i) sees exactly the batches an uninterrupted run would have seen.

An image folder too large for memory (`StreamingFolder`) goes through a torch DataLoader whose
workers decode the same batches of indices; normalisation and augmentation stay batched on the
device, with the same generators, so the batches are the same as if it had fitted in memory.

A folder of images of any size (augment "paper" | "random-resized", ImageNet) is cut into
views in the workers (`resnets.data.views`): image k of epoch e gets a random crop drawn from
a `random.Random` seeded with (seed, e, k), whatever worker cuts it; then on the device the
batch is normalised, flipped and given PCA colour noise with the (seed, e, i) generator.
Evaluation cuts the centre crop, or with crops=10 the five crops of the paper's 10-crop testing,
flipped on the device into ten: batches of (B, 10, C, H, W).
"""

from __future__ import annotations

import hashlib
import math
import os
import random
from typing import Iterator

import torch

from resnets.data.augment import lighting as add_lighting
from resnets.data.augment import pad_crop_flip
from resnets.data.normalize import Normalizer
from resnets.data.views import AUGMENTS, CROPS, RANDOM_VIEWS, View, default_lighting
from resnets.errors import UserError

VIEW_SALT = 0x71E3  # keeps an image's view draw (seed, epoch, index, salt) apart from batch draws
MAX_DEFAULT_WORKERS = 8


def seed_of(*key: int) -> int:
    """A 63-bit seed from a tuple of ints, identically on every machine and run."""
    digest = hashlib.sha256(",".join(str(int(k)) for k in key).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _generator(*key: int) -> torch.Generator:
    """A CPU generator seeded from a tuple of ints, identically on every machine and run."""
    return torch.Generator().manual_seed(seed_of(*key))


def part_rows(count: int, part: tuple[int, int]) -> slice:
    """Rows of a batch of `count` images that process `rank` of `processes` takes (`part`):
    contiguous, sizes differing by at most one (equal when `processes` divides `count`)."""
    rank, processes = part
    return slice(rank * count // processes, (rank + 1) * count // processes)


def default_workers() -> int:
    """DataLoader workers when none are asked for: one per CPU core this process may use, at
    most MAX_DEFAULT_WORKERS."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_WORKERS, cores))


class Loader:
    """Batches of (images float32 (B, C, H, W), labels int64 (B,)) on `device`.

    shuffle: a new permutation each epoch (else the dataset's order).
    pad: zero padding for the random crop (the paper: 4 on CIFAR); 0 turns cropping off.
    flip: random horizontal flips (the dataset's `default_flip` is the sensible choice).
    normalizer: applied before augmentation, so padding is zero in normalised units (the mean);
        None gives images / 255.
    drop_last: True drops the last partial batch of each epoch (every batch has `batch_size`
        images); False yields it, smaller.
    workers: DataLoader worker processes, used only for a dataset streamed from disk (None:
        `default_workers()`). They change nothing in the batches.
    augment: "paper" | "random-resized": each image of a folder of any-size files is a random
        view (the dataset's crop_size); "pad-crop" or None: no per-image random view (files of
        any size get the centre view), only `pad` and `flip`.
    crops: 1, or 10 for the paper's 10-crop testing (files of any size, no random
        augmentation): images come as (B, 10, C, H, W).
    lighting: std of AlexNet's PCA colour noise, on the device (None: the augment's default,
        0.1 for "paper", else 0).

    part: (rank, processes): under torchrun, each process takes its slice of every batch
        (`part_rows`), augmented exactly as in the whole batch, so
        N processes together see exactly the images one process would. `batch_size` stays the
        whole (global) batch and `len(loader)` its number of batches.

    A dataset that skips unreadable files (`skip_bad`) leaves them out of their batch (which is
    then smaller) and records each one's message, once, in `skipped`.
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
        workers: int | None = None,
        augment: str | None = None,
        crops: int = 1,
        lighting: float | None = None,
        part: tuple[int, int] = (0, 1),
    ):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"batch_size {batch_size!r} is invalid: expected a positive integer")
        if not isinstance(pad, int) or pad < 0:
            raise UserError(f"pad {pad!r} is invalid: expected an integer >= 0")
        if workers is not None and (not isinstance(workers, int) or workers < 0):
            raise UserError(f"workers {workers!r} is invalid: expected an integer >= 0")
        rank, processes = part
        if not (isinstance(processes, int) and isinstance(rank, int) and 0 <= rank < processes):
            raise UserError(f"part {part!r} is invalid: expected (rank, processes) with "
                            f"0 <= rank < processes")
        if drop_last and batch_size % processes:
            raise UserError(f"batch_size {batch_size} does not divide among {processes} "
                            f"processes: it is the global batch; give a multiple of {processes}")
        self.part = (rank, processes)
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.pad = pad
        self.flip = flip
        self.device = torch.device(device)
        self.seed = int(seed)
        self.drop_last = drop_last
        self.channels_last = channels_last
        self.workers = default_workers() if workers is None else workers
        self.crops = crops
        self.lighting = default_lighting(augment) if lighting is None else float(lighting)
        self.normalizer = (normalizer or Normalizer("none", torch.zeros(1, 1, 1), torch.full((1, 1, 1), 255.0)))
        self.normalizer = self.normalizer.to(self.device)
        self.streaming = not hasattr(dataset, "images")
        self.view = self._view(augment)
        self.skipped: list[str] = []  # messages of the unreadable files left out, each once
        self._skipped: set[str] = set()
        if self.lighting and (self.lighting < 0 or self._channels() != 3):
            raise UserError(f"lighting {lighting!r} is invalid: PCA colour noise needs RGB images and a std >= 0")
        if not self.streaming:
            self.images = dataset.images.to(self.device)  # (N, C, H, W) uint8, resident
        self.labels = dataset.labels.to(self.device)

    def _view(self, augment: str | None) -> View | None:
        """The per-image view the workers cut (None: images are used as decoded)."""
        if augment is not None and augment not in AUGMENTS:
            raise UserError(f"unknown augment {augment!r}: expected one of {', '.join(AUGMENTS)}")
        if self.crops not in CROPS:
            raise UserError(f"crops {self.crops!r} is invalid: expected 1 (centre crop) or 10 (the paper's "
                            f"10-crop testing)")
        crop_size = getattr(self.dataset, "crop_size", None) if self.streaming else None
        if crop_size is None:
            if augment in RANDOM_VIEWS or self.crops != 1:
                what = f"augment {augment!r}" if augment in RANDOM_VIEWS else f"crops={self.crops}"
                raise UserError(f"{what} cuts views from image files of any size: load the folder with "
                                f"augment 'paper' or 'random-resized' (--augment with --data folder:PATH); "
                                f"{getattr(self.dataset, 'name', 'this dataset')} holds images of one fixed size")
            return None
        if self.crops != 1 and (augment in RANDOM_VIEWS or self.pad or self.flip or self.lighting):
            raise UserError(f"crops={self.crops} is an evaluation view: use it without random augmentation "
                            f"(augment, pad, flip, lighting)")
        kind = augment if augment in RANDOM_VIEWS else ("ten-crop" if self.crops == 10 else "center")
        return View(kind, crop_size, self.dataset.resize_size)

    def _channels(self) -> int:
        if self.streaming:
            return 3  # image folders are RGB
        return int(self.dataset.images.shape[1])

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
        n = len(order)
        # Batch i is order[i*B : (i+1)*B] (the last may be smaller); this process takes its
        # part of it: rows `mine` of the batch's `total`.
        parts = []
        for i in steps:
            total = min(n, (i + 1) * self.batch_size) - i * self.batch_size
            mine = part_rows(total, self.part)
            parts.append((slice(i * self.batch_size + mine.start, i * self.batch_size + mine.stop),
                          mine, total))
        if not self.streaming:
            for i, (rows, mine, total) in zip(steps, parts):
                images = self.images[device_order[rows]]  # (b, C, H, W) uint8, gathered on the device
                yield self._finish(images, epoch, i, (mine, total)), self.labels[device_order[rows]]
            return
        slices = [rows for rows, _, _ in parts]
        for i, (rows, mine, total), (images, kept) in zip(steps, parts,
                                                          self._stream(epoch, order, slices)):
            labels = self.labels[device_order[rows]]
            within = (mine, total)
            if kept is not None:  # unreadable files were left out
                labels = labels[kept.to(self.device)]
                within = (torch.arange(mine.start, mine.stop)[kept], total)
            images = images.to(self.device, non_blocking=True)  # (b, C, H, W) or (b, 5, C, H, W) uint8
            yield self._finish(images, epoch, i, within), labels

    def _finish(self, images: torch.Tensor, epoch: int, index: int, within: tuple) -> torch.Tensor:
        """Normalise and augment one uint8 batch (B, C, H, W) on the device (five crops
        (B, 5, C, H, W) become ten, (B, 10, C, H, W), with their flips). `within`: which rows
        of batch `index` these are (the random draws are made for the whole batch)."""
        images = self.normalizer(images)
        if self.crops == 10:
            return torch.cat([images, images.flip(-1)], dim=1)  # (B, 10, C, H, W)
        generator = _generator(self.seed, epoch, index) if (self.pad or self.flip or self.lighting) else None
        if self.pad or self.flip:
            images = pad_crop_flip(images, generator, self.pad, self.flip, within=within)
        if self.lighting:  # drawn after pad and flip: the pad-crop batches stay what they were
            # in normalised units: the same as adding it to the pixels before normalising
            images = add_lighting(images, generator, self.lighting, scale=255.0 / self.normalizer.std.flatten(),
                                  within=within)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def _stream(self, epoch: int, order: torch.Tensor, slices: list[slice]
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """(uint8 batch, positions kept or None) decoded by DataLoader workers, in the order of
        `slices` of `order`."""
        from torch.utils.data import DataLoader

        loader = DataLoader(
            _Reader(self.dataset, self.view, self.seed),
            batch_sampler=_Keys(epoch, order, slices),
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            collate_fn=_collate,
            persistent_workers=False,
        )
        try:
            for images, kept, bad in loader:
                if bad:
                    self.skipped += [message for message in bad if message not in self._skipped]
                    self._skipped.update(bad)
                    if images is None:
                        raise UserError(f"every image of a batch of epoch {epoch} is unreadable "
                                        f"(e.g. {bad[0]})")
                yield images, kept
        except UserError as error:  # raised in a worker: keep its one line, not the traceback
            from resnets.data.folder import worker_error

            raise worker_error(error) from None


class _Keys:
    """The batch sampler: for each slice of the epoch's order, [(epoch, index), ...], made only
    when the DataLoader asks for it (a list of 1.28 million tuples would cost ~100 MB)."""

    def __init__(self, epoch: int, order: torch.Tensor, slices: list[slice]):
        self.epoch, self.order, self.slices = epoch, order, slices

    def __len__(self) -> int:
        return len(self.slices)

    def __iter__(self):
        for rows in self.slices:
            yield [(self.epoch, index) for index in self.order[rows].tolist()]


class _Reader(torch.utils.data.Dataset):
    """What a DataLoader worker runs: (epoch, index) -> the image's view, with its random
    numbers drawn from (seed, epoch, index) alone; with a dataset that skips unreadable files,
    such a file gives its message instead."""

    def __init__(self, dataset, view: View | None, seed: int):
        self.dataset, self.view, self.seed = dataset, view, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        if self.view is None:
            return self.dataset.fetch(index) if hasattr(self.dataset, "fetch") else self.dataset[index][0]
        rng = random.Random(seed_of(self.seed, epoch, index, VIEW_SALT)) if self.view.kind in RANDOM_VIEWS else None
        return self.dataset.fetch(index, self.view, rng)


def _collate(items: list) -> tuple[torch.Tensor | None, torch.Tensor | None, list[str]]:
    """(the images stacked, the positions kept (None: all), messages of the files left out)."""
    bad = [item for item in items if isinstance(item, str)]
    if not bad:
        return torch.stack(items), None, []
    kept = [i for i, item in enumerate(items) if not isinstance(item, str)]
    images = torch.stack([items[i] for i in kept]) if kept else None
    return images, torch.tensor(kept, dtype=torch.int64), bad
