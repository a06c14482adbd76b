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
    image_crop: int | None = None,
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
    image_size: resize the images to this side: image folders resize the shorter side and
        centre-crop a square; the in-memory sets (bundled, CIFAR), whose images are square,
        are resized at load (bilinear, antialiased, as PIL resizes the images `predict` reads).
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
    image_crop: in-memory sets only: keep the centre image_crop x image_crop pixels of every
        image (after any image_size), at their resolution.
    """
    _check_options(name, split, image_size, augment, skip_bad_images, image_crop)
    if name in ("bundled", "cifar10", "cifar100", "cifar100-coarse"):
        dataset = _in_memory(name, split, root, seed, val_fraction, label)
        return cropped(resized(dataset, image_size), image_crop)
    if name.startswith("folder:"):
        from resnets.data.folder import load_folder

        folder = load_folder(name[len("folder:"):], split, seed=seed, val_fraction=val_fraction,
                             image_size=image_size, max_memory_bytes=max_memory_bytes,
                             augment=augment, crop_size=crop_size, resize_size=resize_size,
                             skip_bad_images=skip_bad_images)
        if image_crop is not None and not hasattr(folder, "images"):
            raise UserError(f"image_crop needs the images in memory; {name} is too large and "
                            f"streams from disk: drop image_crop and set image_size")
        return cropped(folder, image_crop)
    raise UserError(f"unknown dataset {name!r}: expected one of {', '.join(NAMES)}")


def resized(dataset, image_size: int | None):
    """An in-memory dataset with its square images resized to image_size x image_size (None:
    as it is): bilinear with antialiasing, the filter PIL's resize uses, so a model trained on
    them sees what `predict` makes of an image file; rounded back to uint8."""
    if image_size is None or dataset.images.shape[-1] == image_size == dataset.images.shape[-2]:
        return dataset
    import dataclasses

    import torch
    import torch.nn.functional as F

    def resize(chunk: torch.Tensor) -> torch.Tensor:  # a float copy of 4,096 images at most
        out = F.interpolate(chunk.float(), size=(image_size, image_size), mode="bilinear",
                            antialias=True, align_corners=False)
        return out.round_().clamp_(0, 255).to(torch.uint8)

    images = dataset.images
    images = torch.cat([resize(chunk) for chunk in images.split(4096)]) if len(images) else \
        images.new_zeros((0, images.shape[1], image_size, image_size))
    return dataclasses.replace(dataset, images=images)


def _in_memory(name: str, split: str, root, seed: int, val_fraction, label: str):
    if name == "bundled":
        from resnets.data.bundled import load_bundled

        return load_bundled(split, seed=seed, val_fraction=val_fraction)
    from resnets.data.cifar import load_cifar

    if name == "cifar100-coarse":
        name, label = "cifar100", "coarse"
    return load_cifar(name, split, root=root, seed=seed, val_fraction=val_fraction, label=label)


def cropped(dataset, image_crop: int | None):
    """An in-memory dataset with only the centre image_crop x image_crop pixels of each image
    (None: as it is); refused where the images are smaller."""
    if image_crop is None:
        return dataset
    height, width = dataset.images.shape[-2:]
    if image_crop > min(height, width):
        raise UserError(f"image_crop {image_crop} is larger than the {dataset.name} images "
                        f"({height} x {width}): give a smaller --image-crop, or --image-crop 0 "
                        f"for whole images (the quick preset crops the bundled digits to 20)")
    top, left = (height - image_crop) // 2, (width - image_crop) // 2
    import dataclasses

    images = dataset.images[..., top:top + image_crop, left:left + image_crop].contiguous()
    return dataclasses.replace(dataset, images=images)


def side_before_crop(name: str, image_size: int | None) -> int | None:
    """The side of an in-memory set's images before image_crop: image_size, else the set's
    own (28 for the bundled digits, 32 for CIFAR); None for an image folder."""
    if image_size is not None:
        return image_size
    return {"bundled": 28, "cifar10": 32, "cifar100": 32, "cifar100-coarse": 32}.get(name)


def _check_options(name, split: str, image_size, augment: str, skip_bad_images: bool,
                   image_crop) -> None:
    """Refuse a split, a name or an option the named dataset does not take."""
    check_split(split)
    if not isinstance(name, str) or not name:
        raise UserError(f"dataset name {name!r} is invalid: expected one of {', '.join(NAMES)}")
    if image_crop is not None and (isinstance(image_crop, bool) or not isinstance(image_crop, int)
                                   or image_crop < 1):
        raise UserError(f"image_crop {image_crop!r} is invalid: expected a positive integer")
    if image_crop is not None and name.startswith("folder:") and augment != "pad-crop":
        raise UserError(f"image_crop applies to images held in memory (augment pad-crop), not "
                        f"to augment {augment}, whose views are crop_size squares")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int)
                                   or image_size < 1):
        raise UserError(f"image_size {image_size!r} is invalid: expected a positive integer")
    if augment != "pad-crop" and not name.startswith("folder:"):
        if augment not in AUGMENTS:
            raise UserError(f"unknown augment {augment!r}: expected one of {', '.join(AUGMENTS)}")
        raise UserError(f"augment {augment!r} cuts crops from image files of any size: use it with "
                        f"folder:PATH (a tree with train/ and val/), not {name!r}, whose images are small "
                        f"and of one size (augment pad-crop)")
    if skip_bad_images and not name.startswith("folder:"):
        raise UserError(f"skip_bad_images applies only to folder:PATH datasets, not {name!r}")

