"""Generated JPEG trees for the ImageNet benchmarks (no download, no data set needed).

Pictures are smooth random waves plus pixel noise, saved at JPEG quality 90: their files are
of a photo's order of size (about 70 KB at 500x375, where ImageNet's average file is about
110 KB), so decoding costs about what a photo's does. Sizes are drawn uniformly between two
corners (default ImageNet's typical 400x350 to 500x375), a quarter of them portrait.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from PIL import Image


def picture(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = []
    for _ in range(3):
        fx, fy, phase = rng.uniform(1, 8), rng.uniform(1, 8), rng.uniform(0, 6.3)
        wave = np.sin(x / width * fx * 3.1 + phase) * np.cos(y / height * fy * 3.1)
        channels.append(128 + 90 * wave + rng.normal(0, 12, (height, width)))
    return Image.fromarray(np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8), "RGB")


def parse_size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    return int(width), int(height)


def write_tree(root: Path, count: int, smallest=(400, 350), largest=(500, 375), classes: int = 2,
               seed: int = 0, val_per_class: int = 2) -> list[Path]:
    """root/train/cK/K_I.JPEG (count files over `classes` folders) and a small root/val/;
    returns the training files. Files already there are kept (a rerun reuses the tree)."""
    rng, draw = np.random.default_rng(seed), random.Random(seed)
    paths = []
    for part, n in (("train", count), ("val", val_per_class * classes)):
        for index in range(n):
            folder = root / part / f"c{index % classes}"
            path = folder / f"{part}_{index}.JPEG"
            if part == "train":
                paths.append(path)
            if path.exists():
                continue
            folder.mkdir(parents=True, exist_ok=True)
            width, height = draw.randint(smallest[0], largest[0]), draw.randint(smallest[1], largest[1])
            if draw.random() < 0.25:
                width, height = height, width
            picture(width, height, rng).save(path, "JPEG", quality=90)
    return paths
