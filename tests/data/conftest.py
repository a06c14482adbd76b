"""Fixtures that write tiny datasets in the real formats (CIFAR pickles, image trees)."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _dump(value) -> bytes:
    return pickle.dumps(value, protocol=2)


def write_cifar(root: Path, name: str, per_batch: int = 4, n_test: int = 3, seed: int = 0) -> dict:
    """Write `name`'s extracted folder and .tar.gz under root; return what they hold.

    Returned: {"folder", "archive", "classes" (cifar10's names), "train": (data (N, 3072) uint8,
    labels...), "test": ...}.
    """
    rng = np.random.default_rng(seed)
    folder_name = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
    folder = root / folder_name
    folder.mkdir(parents=True)
    files: dict[str, bytes] = {}
    out = {"folder": folder, "classes": CIFAR10_NAMES if name == "cifar10" else None}
    if name == "cifar10":
        files["batches.meta"] = _dump({b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_vis": 3072})
        datas, labels = [], []
        for i in range(1, 6):
            data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
            label = rng.integers(0, 10, per_batch).tolist()
            files[f"data_batch_{i}"] = _dump({b"batch_label": b"training batch", b"data": data, b"labels": label,
                                              b"filenames": [b"x.png"] * per_batch})
            datas.append(data)
            labels += label
        out["train"] = (np.concatenate(datas), labels)
        data = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
        label = rng.integers(0, 10, n_test).tolist()
        files["test_batch"] = _dump({b"data": data, b"labels": label})
        out["test"] = (data, label)
    else:
        files["meta"] = _dump({b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                               b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]})
        for split, n in (("train", 5 * per_batch), ("test", n_test)):
            data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            fine = rng.integers(0, 100, n).tolist()
            coarse = [f // 5 for f in fine]
            files[split] = _dump({b"data": data, b"fine_labels": fine, b"coarse_labels": coarse})
            out[split] = (data, fine, coarse)
    for member, data in files.items():
        (folder / member).write_bytes(data)
    archive_dir = root / "archive"
    archive_dir.mkdir()
    archive = archive_dir / ("cifar-10-python.tar.gz" if name == "cifar10" else "cifar-100-python.tar.gz")
    with tarfile.open(archive, "w:gz") as tar:
        for member, data in files.items():
            info = tarfile.TarInfo(f"{folder_name}/{member}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out["archive"] = archive
    return out


@pytest.fixture
def cifar10(tmp_path):
    return write_cifar(tmp_path / "c10", "cifar10")


@pytest.fixture
def cifar100(tmp_path):
    return write_cifar(tmp_path / "c100", "cifar100")
