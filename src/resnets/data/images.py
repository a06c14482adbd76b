"""Reading one image file: which files are images, 8-bit RGB, reduced-size JPEG decoding.

Everything that opens an image file (image folders, the views DataLoader workers cut, predict)
does it through this module, so what counts as an image, how 16-bit, CMYK, palette and
grayscale images become 8-bit RGB, and what the message for an unreadable file says are
written once.

    with open_image(path) as file:          # the header only: file.size is (width, height)
        image, scale = file.rgb(shrink=2.5)  # decoded, possibly at 1/2, 1/4 or 1/8 size
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch

from resnets.errors import UserError


@functools.cache
def image_extensions() -> frozenset[str]:
    """Lower-case suffixes (".png", ".tif", ...) of every format the installed Pillow can read."""
    from PIL import Image

    return frozenset(ext for ext, kind in Image.registered_extensions().items() if kind in Image.OPEN)


def pillow_reason(error: Exception, path: str | Path) -> str:
    """Why Pillow could not read `path`, for a message that names the path already."""
    return str(error).replace(f" {str(path)!r}", "") or type(error).__name__


def cannot_read(path: str | Path, error: Exception) -> UserError:
    """The one message for an image file whose header or pixels Pillow cannot read."""
    return UserError(f"cannot read image {path} ({pillow_reason(error, path)}): expected an image file "
                     f"Pillow reads")


def to_8bit(image):
    """A PIL image with 8 bits per channel: 16-bit, 32-bit and float grayscale are scaled, not clipped.

    Pillow's own `convert("L")` clips these modes at 255, so a 16-bit gradient turns almost all
    white. Unsigned 16-bit modes (I;16, I;16B, ...) map 0..65535 to 0..255; mode I the same when
    its values fit 16 bits; float values in [0, 1] map to 0..255; anything else (negative
    values, 32-bit ranges) is stretched from its own minimum and maximum. Other modes pass.
    """
    import numpy as np
    from PIL import Image

    if not (image.mode.startswith("I") or image.mode == "F"):
        return image
    values = np.asarray(image)
    low, high = (values.min(), values.max()) if values.size else (0, 0)
    if (image.mode.startswith("I;16") and not image.mode.endswith("S")) or (
            image.mode == "I" and low >= 0 and high <= 65535):
        eight = (values.astype(np.uint32) * 255 + 32767) // 65535  # round(v * 255 / 65535)
    elif image.mode == "F" and low >= 0 and high <= 1:
        eight = np.rint(values.astype(np.float32) * 255)
    elif high > low:
        eight = np.rint((values.astype(np.float32) - np.float32(low)) * np.float32(255 / (high - low)))
    else:
        eight = np.zeros(values.shape)
    return Image.fromarray(eight.astype(np.uint8), "L")


class ImageFile:
    """An image file opened for its header; `rgb()` decodes the pixels. Use as a context manager,
    and finish with the image `rgb()` returns inside it (closing may free its pixels).

    size: (width, height) as stored. Any failure, at open or at decode (a foreign file, a
    truncated JPEG), is a `UserError` naming the path.
    """

    def __init__(self, path: str | Path):
        from PIL import Image

        self.path = path
        try:
            self._image = Image.open(path)
        except Exception as error:  # PIL raises many types for a truncated or foreign file
            raise cannot_read(path, error) from None
        self.size: tuple[int, int] = self._image.size

    def rgb(self, shrink: float = 1.0):
        """(the image as loaded 8-bit RGB, the scale it was decoded at: 1, 1/2, 1/4 or 1/8).

        shrink: how many times smaller than stored the caller can use the image (source pixels
        per pixel it will keep). From 2 on, a JPEG is decoded at reduced size by the decoder
        itself (Pillow's `draft`: libjpeg's scaled inverse DCT), by the largest power of two
        up to 8 that keeps it at least 1/shrink of its size; other formats decode at full size.
        Grayscale, CMYK, palette, RGBA and 16-bit images are converted (alpha dropped).
        """
        image, scale = self._image, 1.0
        try:
            if shrink >= 2:
                width, height = self.size
                drafted = image.draft("RGB", (max(1, math.ceil(width / shrink)),
                                              max(1, math.ceil(height / shrink))))
                if drafted is not None:  # None: not a JPEG; the box is the stored size / scale
                    scale = drafted[1][2] / width
            image.load()
            image = to_8bit(image)
            if image.mode == "P":
                image = image.convert("RGBA")  # palette transparency, then dropped like RGBA's
            if image.mode != "RGB":
                image = image.convert("RGB")
        except Exception as error:  # a truncated or corrupt file fails here, not at open
            raise cannot_read(self.path, error) from None
        return image, scale

    def close(self) -> None:
        self._image.close()

    def __enter__(self) -> "ImageFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_image(path: str | Path) -> ImageFile:
    """`path`'s header read, its pixels not yet (see `ImageFile`)."""
    return ImageFile(path)


def to_tensor(image) -> torch.Tensor:
    """An RGB PIL image as a uint8 tensor (3, H, W)."""
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return pixels.view(image.size[1], image.size[0], 3).permute(2, 0, 1).contiguous()  # (3, H, W)
