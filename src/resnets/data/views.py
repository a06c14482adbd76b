"""Views: how one image file of any size becomes the square the model sees.

A view needs the image's own size (to resize and crop it), so it is cut where the file is
decoded, in a DataLoader worker; what is the same for a whole batch (normalising, flipping,
colour noise) is done afterwards on the device by the `Loader`. A random view draws its numbers
from a `random.Random` the caller seeds with (seed, epoch, index), so an image's crop never
depends on which worker, or how many, cut it.

The `augment` setting (AUGMENTS):

  "pad-crop"        the small-image path, unchanged: images decoded once to a fixed square (or
                    their native size) and held in memory; the Loader pads and crops batches.
  "paper"           He et al. 2015, section 3.4: "the image is resized with its shorter side
                    randomly sampled in [256, 480] for scale augmentation. A 224x224 crop is
                    randomly sampled from an image or its horizontal flip". The side range
                    scales with crop_size (8/7 and 15/7 of it).
  "random-resized"  torchvision's recipe: a region of 8% to 100% of the area with aspect ratio
                    3/4 to 4/3, resized to crop_size x crop_size.

Evaluation views: "center" (shorter side resized to resize_size, the centre crop_size square:
the paper's and torchvision's single crop) and "ten-crop" (the four corners and the centre of
the same resized image; the Loader adds their flips: the paper's 10-crop testing, Table 3).

Every view decodes a JPEG at reduced size (1/2, 1/4, 1/8 in the decoder itself) when what it
keeps needs no more resolution, and a training view resamples only the region it keeps, never
the whole resized image.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from resnets.data.images import open_image, to_tensor
from resnets.errors import UserError

AUGMENTS = ("pad-crop", "paper", "random-resized")  # the `augment` setting
RANDOM_VIEWS = AUGMENTS[1:]  # cut per image, in the workers
EVAL_VIEWS = ("center", "ten-crop")
CROPS = (1, 10)  # evaluation crops per image
PAPER_SIDES = (256, 480)  # the paper's shorter-side range, for 224 crops
RESIZE_RATIO = 256 / 224  # evaluation resize / crop: the paper's and torchvision's 256 for 224
AREA = (0.08, 1.0)  # random-resized: fraction of the image's area
ASPECT = (3 / 4, 4 / 3)  # random-resized: width / height
ATTEMPTS = 10  # random-resized: draws before falling back to a centre crop
LIGHTING = {"paper": 0.1}  # default PCA lighting std per augment (AlexNet's 0.1); others 0


def default_resize_size(crop_size: int) -> int:
    """The evaluation resize for a crop: 256 for 224 (crop x 8/7)."""
    return round(crop_size * RESIZE_RATIO)


def default_lighting(augment: str | None) -> float:
    """Std of the PCA colour noise an augment brings: 0.1 for "paper" (the paper follows
    AlexNet), 0 for the others."""
    return LIGHTING.get(augment, 0.0)


def paper_sides(crop_size: int) -> tuple[int, int]:
    """The range of the shorter side for "paper": [256, 480] for 224 crops, scaled with the crop."""
    return round(PAPER_SIDES[0] * crop_size / 224), round(PAPER_SIDES[1] * crop_size / 224)


def check_sizes(crop_size: int, resize_size: int | None) -> int:
    """The resize size to use (the default when None), after checking both are sensible."""
    if not isinstance(crop_size, int) or isinstance(crop_size, bool) or crop_size < 1:
        raise UserError(f"crop_size {crop_size!r} is invalid: expected a positive integer (224 for ImageNet)")
    resize = default_resize_size(crop_size) if resize_size is None else resize_size
    if not isinstance(resize, int) or isinstance(resize, bool) or resize < crop_size:
        raise UserError(f"resize_size {resize!r} is invalid: expected an integer >= crop_size {crop_size} "
                        f"(256 for 224 crops; torchvision's newer weights use 232)")
    return resize


@dataclass(frozen=True)
class Box:
    """A region of an image in its stored pixel coordinates (floats: a crop of a resized image
    maps to fractional source pixels)."""

    left: float
    top: float
    right: float
    bottom: float

    @property
    def width(self) -> float:
        return self.right - self.left

    @property
    def height(self) -> float:
        return self.bottom - self.top


def resized_size(width: int, height: int, short: int) -> tuple[int, int]:
    """(width, height) after resizing so that the shorter side is `short`, aspect kept (rounded)."""
    if width <= height:
        return short, max(short, round(height * short / width))
    return max(short, round(width * short / height)), short


def paper_box(width: int, height: int, rng: random.Random, crop_size: int,
              sides: tuple[int, int] | None = None) -> tuple[int, Box]:
    """("paper") (the shorter side S drawn from `sides`, the crop's region in source pixels).

    S is uniform over the integers of `sides` (default `paper_sides(crop_size)`); the image
    resized to shorter side S gets a crop_size square at a uniform integer offset; the region
    returned is that square mapped back onto the stored image.
    """
    low, high = sides or paper_sides(crop_size)
    side = rng.randint(low, high)
    new_width, new_height = resized_size(width, height, side)
    left = rng.randint(0, new_width - crop_size)
    top = rng.randint(0, new_height - crop_size)
    x_scale, y_scale = width / new_width, height / new_height
    return side, Box(left * x_scale, top * y_scale, min(width, (left + crop_size) * x_scale),
                     min(height, (top + crop_size) * y_scale))


def random_resized_box(width: int, height: int, rng: random.Random, area: tuple[float, float] = AREA,
                       aspect: tuple[float, float] = ASPECT, attempts: int = ATTEMPTS) -> Box:
    """("random-resized") A region of `area` (fraction of the image) and `aspect` (width/height).

    The area fraction is uniform, the aspect ratio log-uniform; a region that does not fit in
    the image is drawn again, up to `attempts` times, then the largest centred region whose
    aspect ratio is in range is used.
    """
    log_low, log_high = math.log(aspect[0]), math.log(aspect[1])
    for _ in range(attempts):
        target = width * height * rng.uniform(*area)
        ratio = math.exp(rng.uniform(log_low, log_high))
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.randint(0, width - w), rng.randint(0, height - h)
            return Box(left, top, left + w, top + h)
    ratio = width / height
    if ratio < aspect[0]:
        w, h = width, min(height, round(width / aspect[0]))
    elif ratio > aspect[1]:
        w, h = min(width, round(height * aspect[1])), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return Box(left, top, left + w, top + h)


def corner_offsets(width: int, height: int, crop_size: int) -> list[tuple[int, int]]:
    """(left, top) of the five crops of a resized image: top-left, top-right, bottom-left,
    bottom-right, centre (the paper's 10-crop testing adds their flips)."""
    right, bottom = width - crop_size, height - crop_size
    return [(0, 0), (right, 0), (0, bottom), (right, bottom), (right // 2, bottom // 2)]


@dataclass(frozen=True)
class View:
    """One way of cutting the model's input from an image file (picklable for the workers).

    kind: "paper" | "random-resized" (random: `read` needs an rng) | "center" | "ten-crop".
    """

    kind: str
    crop_size: int
    resize_size: int

    def __post_init__(self):
        if self.kind not in RANDOM_VIEWS + EVAL_VIEWS:
            raise UserError(f"unknown view {self.kind!r}: expected one of {', '.join(RANDOM_VIEWS + EVAL_VIEWS)}")

    def read(self, path: str | Path, rng: random.Random | None = None) -> torch.Tensor:
        """The view of the image at `path`: uint8 (3, crop, crop), or (5, 3, crop, crop) for
        "ten-crop". A file that cannot be decoded raises a UserError naming it."""
        if self.kind in RANDOM_VIEWS:
            return self._random(path, rng)
        return self._evaluation(path)

    def _random(self, path, rng: random.Random) -> torch.Tensor:
        from PIL import Image

        crop = self.crop_size
        with open_image(path) as file:
            width, height = file.size
            if self.kind == "paper":
                _, box = paper_box(width, height, rng, crop)
            else:
                box = random_resized_box(width, height, rng)
            image, scale = file.rgb(shrink=min(box.width, box.height) / crop)
            region = (box.left * scale, box.top * scale, min(image.width, box.right * scale),
                      min(image.height, box.bottom * scale))
            return to_tensor(image.resize((crop, crop), Image.Resampling.BILINEAR, box=region))

    def _evaluation(self, path) -> torch.Tensor:
        from PIL import Image

        crop = self.crop_size
        with open_image(path) as file:
            width, height = file.size
            size = resized_size(width, height, self.resize_size)
            image, scale = file.rgb(shrink=min(width, height) / self.resize_size)
            whole = (0, 0, min(image.width, width * scale), min(image.height, height * scale))
            resized = image.resize(size, Image.Resampling.BILINEAR, box=whole)
        offsets = corner_offsets(*size, crop)
        if self.kind == "center":
            offsets = offsets[4:]
        crops = [to_tensor(resized.crop((left, top, left + crop, top + crop))) for left, top in offsets]
        return crops[0] if self.kind == "center" else torch.stack(crops)  # (3, c, c) | (5, 3, c, c)
