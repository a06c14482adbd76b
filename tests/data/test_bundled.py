import gzip
import hashlib
import importlib.util
from pathlib import Path

import pytest
import torch

import resnets.data.bundled as bundled
from resnets.data import load
from resnets.data.dataset import split_indices
from resnets.errors import UserError

TOOL = Path(__file__).resolve().parents[2] / "tools" / "make_bundled.py"


def test_bundled_set_has_5000_digits_of_28x28_and_its_checksum_matches():
    assert hashlib.sha256(bundled.FILE.read_bytes()).hexdigest() == bundled.SHA256
    trainval, test = load("bundled", "trainval"), load("bundled", "test")
    assert len(trainval) + len(test) == 5000
    for ds in (trainval, test):
        assert ds.images.dtype == torch.uint8 and ds.images.shape[1:] == (1, 28, 28)
        assert ds.labels.dtype == torch.int64 and set(ds.labels.tolist()) == set(range(10))
        assert ds.classes == [str(d) for d in range(10)] and ds.default_flip is False
    assert 0 < test.images.float().mean() < 80 and test.images.max() == 255  # dark digits on black


def test_bundled_split_is_stratified_20_percent():
    assert torch.bincount(load("bundled", "test").labels).tolist() == [100] * 10
    assert torch.bincount(load("bundled", "trainval").labels).tolist() == [400] * 10


def test_validation_split_is_drawn_from_the_seed():
    train, val = load("bundled", "train", seed=2), load("bundled", "val", seed=2)
    assert (len(train), len(val)) == (3600, 400)
    assert torch.equal(load("bundled", "val", seed=2).images, val.images)
    assert not torch.equal(load("bundled", "val", seed=3).images, val.images)
    trainval = load("bundled", "trainval")
    train_idx, val_idx = split_indices(4000, 400, 2)
    assert torch.equal(trainval.images[val_idx], val.images) and torch.equal(trainval.images[train_idx], train.images)
    none_held_out = load("bundled", "train", val_fraction=0)
    assert len(load("bundled", "val", val_fraction=0)) == 0 and torch.equal(none_held_out.images, trainval.images)


def test_cifar_protocol_split_sizes():
    from resnets.data.dataset import DEFAULT_VAL_FRACTION, val_size

    assert val_size(50_000, DEFAULT_VAL_FRACTION) == 5_000  # the paper's 45k/5k
    train, val = split_indices(50_000, val_size(50_000, DEFAULT_VAL_FRACTION), seed=0)
    assert (len(train), len(val)) == (45_000, 5_000)
    assert len(set(train.tolist()) | set(val.tolist())) == 50_000


def test_bad_names_splits_and_fractions_are_user_errors():
    with pytest.raises(UserError, match="unknown dataset 'mnist'.*bundled"):
        load("mnist")
    with pytest.raises(UserError, match="unknown split 'dev'"):
        load("bundled", "dev")
    with pytest.raises(UserError, match="val_fraction 1.5"):
        load("bundled", val_fraction=1.5)
    with pytest.raises(UserError, match="image_size=32 applies only to folder"):
        load("bundled", image_size=32)


def test_corrupt_bundled_file_is_a_user_error(tmp_path, monkeypatch):
    broken = tmp_path / "mnist5k.u8.gz"
    data = bytearray(bundled.FILE.read_bytes())
    data[1000] ^= 0xFF
    broken.write_bytes(bytes(data))
    monkeypatch.setattr(bundled, "FILE", broken)
    with pytest.raises(UserError, match=f"{broken} has sha256 .*expected {bundled.SHA256}"):
        load("bundled")


def test_converter_writes_what_the_reader_reads():
    spec = importlib.util.spec_from_file_location("make_bundled", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    rows = [[label * 10 + i] * 4 + [label] for label in (0, 1) for i in range(10)]  # 2x2 "images"
    data = tool.convert("\n".join(",".join(map(str, r)) for r in rows), side=2)
    assert data == tool.convert("\n".join(",".join(map(str, r)) for r in rows), side=2)  # reproducible
    images, labels, n_train = bundled.parse(data, "tiny")
    assert n_train == 16 and images.shape == (20, 1, 2, 2)
    test_values = images[n_train:, 0, 0, 0].tolist()
    assert test_values == [4, 9, 14, 19]  # every 5th image of each class, in row order
    assert labels[n_train:].tolist() == [0, 0, 1, 1]
    with pytest.raises(UserError, match="tiny.*RNDIGITS"):
        bundled.parse(gzip.compress(b"something else entirely"), "tiny")
