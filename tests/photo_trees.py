"""Generated ImageNet-style trees of JPEGs (and a 16-bit PNG) for the tests of both rooms."""

from __future__ import annotations


# (width, height, mode, format) of the images `write_photo_tree` puts in each class of train/:
# ImageNet-like sizes and aspect ratios, some smaller than 256 on a side, a grayscale and a CMYK
# JPEG, and a 16-bit PNG.
PHOTO_SIZES = [(500, 375, "RGB", "JPEG"), (375, 500, "RGB", "JPEG"), (300, 260, "RGB", "JPEG"),
               (260, 200, "RGB", "JPEG"), (180, 240, "RGB", "JPEG"), (400, 350, "L", "JPEG"),
               (320, 280, "CMYK", "JPEG"), (280, 300, "I;16", "PNG")]


def photo(width: int, height: int, mode: str = "RGB", seed: int = 0):
    """A random picture: smooth waves (a photo's low frequencies) plus pixel noise, so JPEG
    files have realistic sizes and any two crops of it differ."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = []
    for _ in range(3):
        fx, fy, phase = rng.uniform(1, 6, 2).tolist() + [rng.uniform(0, 6.3)]
        wave = np.sin(x / width * fx * 3.1 + phase) * np.cos(y / height * fy * 3.1)
        channels.append(128 + 90 * wave + rng.normal(0, 12, (height, width)))
    rgb = Image.fromarray(np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8), "RGB")
    if mode == "I;16":
        gray = np.asarray(rgb.convert("L")).astype(np.uint16) * 257
        return Image.fromarray(gray)  # mode I;16
    return rgb.convert(mode)


def write_photo_tree(root, classes=("n01440764", "n02102040"), val_per_class: int = 2,
                     sizes=None):
    """root/train/<wnid>/<wnid>_<k>.JPEG|PNG (PHOTO_SIZES each) and root/val/<wnid>/...;
    returns root."""
    from pathlib import Path

    root = Path(root)
    sizes = PHOTO_SIZES if sizes is None else sizes
    seed = 0
    for part in ("train", "val"):
        for name in classes:
            folder = root / part / name
            folder.mkdir(parents=True)
            chosen = sizes if part == "train" else sizes[:val_per_class]
            for k, (width, height, mode, kind) in enumerate(chosen):
                seed += 1
                suffix = ".JPEG" if kind == "JPEG" else ".png"
                options = {"quality": 90} if kind == "JPEG" else {}
                photo(width, height, mode, seed).save(folder / f"{name}_{k}{suffix}", kind, **options)
    return root

