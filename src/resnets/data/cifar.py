"""CIFAR-10 and CIFAR-100 from the official python-version archives.

`root` (the `--data-dir`) may hold the archive (`cifar-10-python.tar.gz`,
`cifar-100-python.tar.gz`), its extracted folder (`cifar-10-batches-py/`, `cifar-100-python/`),
or be that folder itself. Each batch file is a pickled dict: b"data" an (N, 3072) uint8 array,
each row 1024 red, then 1024 green, then 1024 blue values of a 32 x 32 image in row-major order;
b"labels" (CIFAR-10) or b"fine_labels" and b"coarse_labels" (CIFAR-100). Class names come from
`batches.meta` (b"label_names") or `meta` (b"fine_label_names", b"coarse_label_names").

The pickles are read by an unpickler that resolves only numpy's array-rebuilding functions, so
an archive crafted to run code when unpickled raises a UserError instead.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch

from resnets.data.dataset import Dataset, resolve_val_fraction, select, val_size
from resnets.errors import UserError

LAYOUT = {
    "cifar10": {
        "archive": "cifar-10-python.tar.gz",
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
    },
    "cifar100": {
        "archive": "cifar-100-python.tar.gz",
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
    },
}

# (module, name) pairs a CIFAR pickle may name: numpy's ndarray/dtype reconstruction, and
# _codecs.encode, which protocol-2 pickles written by Python 3 use to rebuild bytes (str -> bytes).
_ALLOWED_GLOBALS = {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def unpickle(data: bytes, source: str) -> dict:
    """A CIFAR batch dict from pickle bytes, allowing nothing but numpy arrays, lists, bytes."""
    try:
        value = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as error:  # any unpickling failure means a corrupt or hostile file
        raise UserError(f"{source} is not a valid CIFAR batch ({error})") from None
    if not isinstance(value, dict):
        raise UserError(f"{source} holds a {type(value).__name__}: expected a dict (a CIFAR batch)")
    return value


class _Source:
    """The batch files of one CIFAR archive or folder, read by name."""

    def __init__(self, name: str, root: str | None):
        layout = LAYOUT[name]
        if root is None:
            raise UserError(f"{name} needs --data-dir (root): a folder with {layout['archive']} or {layout['folder']}/; "
                            f"fetch it with `resnets download {name} --to DIR`")
        root_path = Path(root).expanduser()
        if not root_path.exists():
            raise UserError(f"data directory {root_path} does not exist: expected a folder with "
                            f"{layout['archive']} or {layout['folder']}/")
        candidates = [root_path / layout["folder"], root_path]
        self.folder = next((c for c in candidates if (c / layout["meta"]).is_file()), None)
        self.archive = None
        if self.folder is None:
            archive = root_path if root_path.is_file() else root_path / layout["archive"]
            if not archive.is_file():
                raise UserError(f"no {name} data in {root_path}: expected {layout['archive']} or "
                                f"{layout['folder']}/ containing {layout['meta']}")
            self.archive = archive
            self._members = self._read_archive(archive, layout)

    @staticmethod
    def _read_archive(archive: Path, layout: dict) -> dict[str, bytes]:
        wanted = set(layout["train"] + layout["test"] + [layout["meta"]])
        members = {}
        try:
            with tarfile.open(archive, "r:*") as tar:
                for member in tar:
                    base = member.name.rsplit("/", 1)[-1]
                    if base in wanted and member.isfile():
                        members[base] = tar.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError) as error:
            raise UserError(f"{archive} is truncated or corrupt ({error}): delete it and download it again") from None
        missing = sorted(wanted - set(members))
        if missing:
            raise UserError(f"{archive} lacks {', '.join(missing)}: expected the official {layout['archive']}")
        return members

    def read(self, member: str) -> dict:
        if self.archive is not None:
            return unpickle(self._members[member], f"{self.archive}:{member}")
        path = self.folder / member
        try:
            data = path.read_bytes()
        except OSError as error:
            raise UserError(f"cannot read {path} ({error.strerror}): expected a CIFAR batch file") from None
        return unpickle(data, str(path))


def _names(values, source: str) -> list[str]:
    if not isinstance(values, list):
        raise UserError(f"{source}: class names are a {type(values).__name__}, expected a list")
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def _batch(batch: dict, source: str, label_key: bytes, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    data, labels = batch.get(b"data"), batch.get(label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise UserError(f"{source}: b'data' is {type(data).__name__} {shape}: expected an (N, 3072) uint8 array")
    if labels is None or len(labels) != data.shape[0]:
        raise UserError(f"{source}: {label_key!r} missing or not one label per image ({data.shape[0]} images)")
    labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    if labels.numel() and (labels.min() < 0 or labels.max() >= n_classes):
        raise UserError(f"{source}: labels outside 0..{n_classes - 1}")
    images = torch.from_numpy(np.ascontiguousarray(data)).view(-1, 3, 32, 32)  # R, G, B planes, row-major
    return images, labels


def load_cifar(name: str, split: str, root: str | None, seed: int = 0,
               val_fraction: float | None = None, label: str = "fine") -> Dataset:
    """One split of CIFAR-10 or CIFAR-100 (`label`: "fine" or "coarse", CIFAR-100 only)."""
    if label not in ("fine", "coarse"):
        raise UserError(f"label {label!r} is invalid: expected 'fine' or 'coarse'")
    if name == "cifar10" and label != "fine":
        raise UserError("label='coarse' applies only to cifar100: CIFAR-10 has one set of labels")
    layout = LAYOUT[name]
    source = _Source(name, root)
    meta_name = f"{source.archive or source.folder}:{layout['meta']}"
    meta = source.read(layout["meta"])
    if name == "cifar10":
        label_key, classes = b"labels", _names(meta.get(b"label_names"), meta_name)
        coarse_classes = None
    else:
        label_key = b"fine_labels" if label == "fine" else b"coarse_labels"
        classes = _names(meta.get(b"fine_label_names" if label == "fine" else b"coarse_label_names"), meta_name)
        coarse_classes = _names(meta.get(b"coarse_label_names"), meta_name)

    members = layout["test"] if split == "test" else layout["train"]
    parts = []
    for member in members:
        batch = source.read(member)
        where = f"{source.archive or source.folder}:{member}"
        images, labels = _batch(batch, where, label_key, len(classes))
        extra = {}
        if name == "cifar100" and label == "fine":
            extra["coarse_labels"] = _batch(batch, where, b"coarse_labels", len(coarse_classes))[1]
        parts.append((images, labels, extra))
    images = torch.cat([p[0] for p in parts])
    labels = torch.cat([p[1] for p in parts])
    meta_out = {}
    if name == "cifar100" and label == "fine":
        meta_out = {"coarse_labels": torch.cat([p[2]["coarse_labels"] for p in parts]), "coarse_classes": coarse_classes}
    display = name if label == "fine" else "cifar100-coarse"
    dataset = Dataset(images, labels, classes, display, default_flip=True,
                      split="test" if split == "test" else "trainval", meta=meta_out)
    if split == "test":
        return dataset
    return select(dataset, split, seed, val_size(len(dataset), resolve_val_fraction(val_fraction)))
