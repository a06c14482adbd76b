"""The shared types of the data room: `Dataset` and the paper's validation split.

Every reader (bundled, cifar, folder) builds a `Dataset` and carves "train"/"val" out of its
whole training set with `select`; `datasets.load` dispatches by name. Living one layer below
both, this module lets the readers and the dispatcher import it without importing each other.

Splits (the paper's protocol, section 4.2): "trainval" is the whole training set; "val" is a
fixed-size subset of it drawn from `seed` (`DEFAULT_VAL_FRACTION` of it unless the caller says
otherwise: CIFAR's 5,000 of 50,000); "train" is the rest; "test" is the official test set.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from resnets.errors import UserError

SPLITS = ("train", "val", "trainval", "test")
DEFAULT_VAL_FRACTION = 0.1  # the paper's 5k of CIFAR's 50k; every dataset's default
VAL_SEED_SALT = 0x5EED_5A17  # keeps the val draw apart from any other use of the same seed


@dataclass
class Dataset:
    """One split of a dataset, resident in memory.

    images: uint8 tensor (N, C, H, W); labels: int64 tensor (N,); classes: class names, label i
    is classes[i]; name: the dataset's name as given to `load`; default_flip: whether random
    horizontal flips suit the images (False for digits, where a flip changes meaning);
    default_pad: the pad-and-crop shift that suits them (the paper's 4 for 32x32 photos);
    class_names: display names, when a source gives them (an image folder's classes.txt).
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str
    default_flip: bool = True
    default_pad: int = 4
    split: str = "trainval"
    meta: dict = field(default_factory=dict)  # e.g. CIFAR-100's coarse labels, never needed to train
    class_names: list[str] | None = None  # None: the classes are their own names

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




def resolve_val_fraction(val_fraction: float | None) -> float:
    """The share of the training set held out: `val_fraction`, or the default when None."""
    return DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
