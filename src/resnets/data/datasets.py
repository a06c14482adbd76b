"""Datasets by name: the one entry point, `load(name, split)`.

`load(name, split)` is the one entry point: `"bundled"`, `"cifar10"`, `"cifar100"`
(`"cifar100-coarse"` for the 20 superclasses) or `"folder:PATH"`. Every dataset comes back as a
`Dataset` of uint8 images (N, C, H, W) and int64 labels, except an image folder too large for
memory, which comes back as a `resnets.data.folder.StreamingFolder` (same attributes, minus
`.images`; the `Loader` reads it through DataLoader workers).

The splits ("train", "val", "trainval", "test") and the `Dataset` type are defined in
`resnets.data.dataset`, which the readers import too.
"""

from __future__ import annotations

from resnets.data.dataset import check_split
from resnets.data.views import AUGMENTS
from resnets.errors import UserError

NAMES = ("bundled", "cifar10", "cifar100", "cifar100-coarse", "folder:PATH")


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
    augment: str = "pad-crop",
    crop_size: int = 224,
    resize_size: int | None = None,
    skip_bad_images: bool = False,
):
    """Load one split of a dataset by name. (Over a screen for its parameters' documentation;
    the body only dispatches to the readers.)

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
    augment: "pad-crop" (default: images of one size, in memory when they fit), or, for image
        folders only, "paper" | "random-resized": a `StreamingFolder` of the files as they are,
        which the Loader cuts into crop_size x crop_size views (`resnets.data.views`).
    crop_size, resize_size: the views' side and the evaluation resize (None: crop_size x 8/7);
        used with augment "paper" | "random-resized".
    skip_bad_images: image folders only: leave out files that cannot be decoded (counted and
        reported) instead of stopping with the file's name.
    """
    _check_options(name, split, image_size, augment, skip_bad_images)
    if name == "bundled":
        from resnets.data.bundled import load_bundled

        return load_bundled(split, seed=seed, val_fraction=val_fraction)
    if name in ("cifar10", "cifar100", "cifar100-coarse"):
        from resnets.data.cifar import load_cifar

        if name == "cifar100-coarse":
            name, label = "cifar100", "coarse"
        return load_cifar(name, split, root=root, seed=seed, val_fraction=val_fraction, label=label)
    if name.startswith("folder:"):
        from resnets.data.folder import load_folder

        return load_folder(name[len("folder:"):], split, seed=seed, val_fraction=val_fraction,
                           image_size=image_size, max_memory_bytes=max_memory_bytes,
                           augment=augment, crop_size=crop_size, resize_size=resize_size,
                           skip_bad_images=skip_bad_images)
    raise UserError(f"unknown dataset {name!r}: expected one of {', '.join(NAMES)}")


def _check_options(name, split: str, image_size, augment: str, skip_bad_images: bool) -> None:
    """Refuse a split, a name or an option the named dataset does not take."""
    check_split(split)
    if not isinstance(name, str) or not name:
        raise UserError(f"dataset name {name!r} is invalid: expected one of {', '.join(NAMES)}")
    if image_size is not None and not name.startswith("folder:"):
        raise UserError(f"image_size={image_size} applies only to folder:PATH datasets, not {name!r}")
    if augment != "pad-crop" and not name.startswith("folder:"):
        if augment not in AUGMENTS:
            raise UserError(f"unknown augment {augment!r}: expected one of {', '.join(AUGMENTS)}")
        raise UserError(f"augment {augment!r} cuts crops from image files of any size: use it with "
                        f"folder:PATH (a tree with train/ and val/), not {name!r}, whose images are small "
                        f"and of one size (augment pad-crop)")
    if skip_bad_images and not name.startswith("folder:"):
        raise UserError(f"skip_bad_images applies only to folder:PATH datasets, not {name!r}")

