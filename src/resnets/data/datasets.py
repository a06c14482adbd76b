"""Datasets by name, and the paper's held-out validation split.

`load(name, split)` is the one entry point: `"bundled"`, `"cifar10"`, `"cifar100"`
(`"cifar100-coarse"` for the 20 superclasses) or `"folder:PATH"`. Every dataset comes back as a
`Dataset` of uint8 images (N, C, H, W) and int64 labels, except an image folder too large for
memory, which comes back as a `resnets.data.folder.StreamingFolder` (same attributes, minus
`.images`; the `Loader` reads it through DataLoader workers).

Splits (the paper's protocol, section 4.2): "trainval" is the whole training set; "val" is a
fixed-size subset of it drawn from `seed` (CIFAR: 5,000 of 50,000; elsewhere `val_fraction`,
default 0.1); "train" is the rest; "test" is the official test set, for final test error only.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from resnets.errors import UserError

SPLITS = ("train", "val", "trainval", "test")
NAMES = ("bundled", "cifar10", "cifar100", "cifar100-coarse", "folder:PATH")
DEFAULT_VAL_FRACTION = 0.1
VAL_SEED_SALT = 0x5EED_5A17  # keeps the val draw apart from any other use of the same seed


@dataclass
class Dataset:
    """One split of a dataset, resident in memory.

    images: uint8 tensor (N, C, H, W); labels: int64 tensor (N,); classes: class names, label i
    is classes[i]; name: the dataset's name as given to `load`; default_flip: whether random
    horizontal flips suit the images (False for digits, where a flip changes meaning).
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str
    default_flip: bool = True
    split: str = "trainval"
    meta: dict = field(default_factory=dict)  # e.g. CIFAR-100's coarse labels, never needed to train

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: torch.Tensor, split: str) -> "Dataset":
        """The images at `indices` (int64 tensor), as a new Dataset named for `split`."""
        meta = {k: (v[indices] if isinstance(v, torch.Tensor) else v) for k, v in self.meta.items()}
        return dataclasses.replace(
            self, images=self.images[indices], labels=self.labels[indices], split=split, meta=meta
        )


def val_size(n: int, val_fraction: float) -> int:
    """How many of `n` training images the validation split holds (rounded to nearest)."""
    if not (isinstance(val_fraction, (int, float)) and 0 <= val_fraction < 1) or math.isnan(val_fraction):
        raise UserError(f"val_fraction {val_fraction!r} is invalid: expected a number in [0, 1)")
    return int(round(n * val_fraction))


def split_indices(n: int, n_val: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic (train, val) index tensors, each sorted, over `n` training images.

    The val indices are the first `n_val` of a permutation drawn from a CPU generator seeded
    with `seed`, so they depend on nothing but (n, n_val, seed), on every device and machine.
    """
    generator = torch.Generator().manual_seed(VAL_SEED_SALT ^ int(seed))
    permutation = torch.randperm(n, generator=generator)
    val = permutation[:n_val].sort().values
    train = permutation[n_val:].sort().values
    return train, val


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")


def select(trainval, split: str, seed: int, n_val: int):
    """The `split` ("train" | "val" | "trainval") part of a whole training set."""
    if split == "trainval":
        return trainval
    train, val = split_indices(len(trainval), n_val, seed)
    return trainval.subset(train if split == "train" else val, split)


def load(
    name: str,
    split: str = "train",
    root: str | None = None,
    seed: int = 0,
    val_fraction: float | None = None,
    image_size: int | None = None,
    *,
    label: str = "fine",
    max_memory_bytes: int | None = None,
):
    """Load one split of a dataset by name.

    name: "bundled" (5,000 MNIST digits shipped in the package), "cifar10", "cifar100",
        "cifar100-coarse" (CIFAR-100 with its 20 superclass labels), or "folder:PATH"
        (an ImageFolder tree with train/ and val/; val/ is the test split).
    split: "train", "val" (held out from the training set, drawn from `seed`), "trainval"
        (the whole training set) or "test".
    root: the folder holding the CIFAR archive or its extracted folder (`--data-dir`).
    val_fraction: share of the training set held out; None -> 5,000/50,000 for CIFAR, 0.1
        elsewhere; 0 -> "val" is empty and "train" is "trainval".
    image_size: image folders only: resize the shorter side to this and centre-crop a square.
    label: CIFAR-100 only: "fine" (100 classes, default) or "coarse" (20 superclasses).
    max_memory_bytes: image folders only: above this decoded size, stream from disk instead of
        holding the split in memory (default: a quarter of the machine's RAM).
    """
    check_split(split)
    if not isinstance(name, str) or not name:
        raise UserError(f"dataset name {name!r} is invalid: expected one of {', '.join(NAMES)}")
    if image_size is not None and not name.startswith("folder:"):
        raise UserError(f"image_size={image_size} applies only to folder:PATH datasets, not {name!r}")

    if name == "bundled":
        from resnets.data.bundled import load_bundled

        return load_bundled(split, seed=seed, val_fraction=DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction)
    if name in ("cifar10", "cifar100", "cifar100-coarse"):
        from resnets.data.cifar import load_cifar

        if name == "cifar100-coarse":
            name, label = "cifar100", "coarse"
        return load_cifar(name, split, root=root, seed=seed, val_fraction=val_fraction, label=label)
    if name.startswith("folder:"):
        from resnets.data.folder import load_folder

        return load_folder(
            name[len("folder:") :],
            split,
            seed=seed,
            val_fraction=DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction,
            image_size=image_size,
            max_memory_bytes=max_memory_bytes,
        )
    raise UserError(f"unknown dataset {name!r}: expected one of {', '.join(NAMES)}")
