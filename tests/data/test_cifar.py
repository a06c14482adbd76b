import pickle
import tarfile

import numpy as np
import pytest
import torch

from resnets.data import load
from resnets.data.cifar import unpickle
from resnets.errors import UserError


def _planes(data: np.ndarray) -> torch.Tensor:
    """The documented layout, spelled out: row = 1024 red, 1024 green, 1024 blue, row-major."""
    n = data.shape[0]
    out = np.zeros((n, 3, 32, 32), dtype=np.uint8)
    for c in range(3):
        for y in range(32):
            out[:, c, y, :] = data[:, c * 1024 + y * 32 : c * 1024 + y * 32 + 32]
    return torch.from_numpy(out)


@pytest.mark.parametrize("source", ["archive", "folder"])
def test_cifar10_gives_the_archives_pixels_in_rgb_planes(cifar10, source):
    root = cifar10["archive"].parent if source == "archive" else cifar10["folder"].parent
    trainval = load("cifar10", "trainval", root=str(root))
    test = load("cifar10", "test", root=str(root))
    assert trainval.images.dtype == torch.uint8 and trainval.images.shape == (20, 3, 32, 32)
    assert torch.equal(trainval.images, _planes(cifar10["train"][0]))
    assert trainval.labels.dtype == torch.int64 and trainval.labels.tolist() == cifar10["train"][1]
    assert torch.equal(test.images, _planes(cifar10["test"][0]))
    assert test.labels.tolist() == cifar10["test"][1]
    assert trainval.classes == cifar10["classes"]
    assert trainval.default_flip is True
    # one pixel by hand: image 7, green, row 5, column 9
    assert trainval.images[7, 1, 5, 9] == cifar10["train"][0][7, 1024 + 5 * 32 + 9]


def test_cifar10_extracted_folder_given_directly(cifar10):
    ds = load("cifar10", "test", root=str(cifar10["folder"]))
    assert torch.equal(ds.images, _planes(cifar10["test"][0]))


def test_cifar100_fine_labels_by_default_and_coarse_on_request(cifar100):
    root = str(cifar100["archive"].parent)
    fine = load("cifar100", "trainval", root=root)
    assert fine.labels.tolist() == cifar100["train"][1]
    assert fine.classes == [f"fine{i}" for i in range(100)]
    assert fine.meta["coarse_labels"].tolist() == cifar100["train"][2]
    coarse = load("cifar100", "test", root=root, label="coarse")
    assert coarse.labels.tolist() == cifar100["test"][2] and len(coarse.classes) == 20
    alias = load("cifar100-coarse", "trainval", root=str(cifar100["folder"].parent))
    assert alias.labels.tolist() == cifar100["train"][2] and alias.classes[3] == "coarse3"
    assert torch.equal(alias.images, fine.images)


def test_cifar_validation_is_a_seeded_tenth_of_the_training_set(cifar10):
    root = str(cifar10["folder"].parent)
    trainval = load("cifar10", "trainval", root=root)
    train, val = load("cifar10", "train", root=root, seed=3), load("cifar10", "val", root=root, seed=3)
    assert (len(train), len(val)) == (18, 2)  # 0.1 of 20, as 5,000 of 50,000
    both = torch.cat([train.images, val.images]).flatten(1)
    assert sorted(map(bytes, both.numpy())) == sorted(map(bytes, trainval.images.flatten(1).numpy()))
    assert torch.equal(load("cifar10", "val", root=root, seed=3).images, val.images)


def test_hostile_pickle_runs_no_code(tmp_path, cifar10):
    marker = tmp_path / "pwned"

    class Hostile:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    (cifar10["folder"] / "test_batch").write_bytes(pickle.dumps({b"data": Hostile()}, protocol=2))
    with pytest.raises(UserError, match="test_batch.*not allowed"):
        load("cifar10", "test", root=str(cifar10["folder"].parent))
    assert not marker.exists()
    with pytest.raises(UserError, match="builtins.eval"):
        unpickle(b"cbuiltins\neval\n(S'1'\ntR.", "x")


def test_truncated_archive_is_named(cifar10):
    archive = cifar10["archive"]
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(UserError, match=f"{archive}.*truncated or corrupt"):
        load("cifar10", "train", root=str(archive.parent))


def test_archive_without_a_batch_is_named(tmp_path, cifar10):
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(cifar10["folder"] / "batches.meta", "cifar-10-batches-py/batches.meta")
    with pytest.raises(UserError, match="lacks data_batch_1"):
        load("cifar10", "train", root=str(tmp_path))


def test_wrong_array_shape_is_named(cifar10):
    (cifar10["folder"] / "test_batch").write_bytes(
        pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, protocol=2))
    with pytest.raises(UserError, match=r"test_batch.*\(N, 3072\) uint8"):
        load("cifar10", "test", root=str(cifar10["folder"].parent))


def test_missing_paths_are_named(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load("cifar10", root=str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match=f"no cifar100 data in {tmp_path}.*cifar-100-python.tar.gz"):
        load("cifar100", root=str(tmp_path))
    with pytest.raises(UserError, match="needs --data-dir"):
        load("cifar10")


def test_python2_pickle_as_in_the_official_archive():
    # The official batches were pickled by Python 2: str opcodes, numpy.core.multiarray.
    data = (b"\x80\x02}(U\x04datacnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"
            b"(K\x01K\x01K\x03\x86cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R(K\x03U\x01|NNNJ\xff\xff\xff\xff"
            b"J\xff\xff\xff\xffK\x00tb\x89U\x03abctbU\x06labels]K\x07au.")
    batch = unpickle(data, "py2")
    assert batch[b"data"].dtype == np.uint8 and batch[b"data"].tolist() == [[97, 98, 99]]
    assert batch[b"labels"] == [7]
