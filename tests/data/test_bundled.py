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
    for bad in (0, -3, 2.5, True):
        with pytest.raises(UserError, match=f"image_size {bad!r} is invalid"):
            load("bundled", image_size=bad)


def test_image_size_resizes_the_bundled_digits_as_pil_resizes_an_image_file():
    """The in-memory sets are resized at load with antialiased bilinear, the filter PIL's
    resize uses (what `predict` does to an image file): both give the same pixels up to
    rounding, and every split is resized alike."""
    from PIL import Image

    native = load("bundled", "test")
    small = load("bundled", "test", image_size=20)
    assert small.images.shape == (1000, 1, 20, 20) and small.images.dtype == torch.uint8
    assert torch.equal(small.labels, native.labels)
    assert load("bundled", "train", image_size=20).images.shape[1:] == (1, 20, 20)
    assert torch.equal(load("bundled", "test", image_size=28).images, native.images)  # native: kept
    # Each output pixel is a weighted mean of input pixels (weights >= 0, summing to 1), so
    # the image's mean brightness is kept to within the uint8 rounding of its pixels.
    assert abs(small.images.float().mean() - native.images.float().mean()) < 0.5
    for k in range(5):
        digit = Image.fromarray(native.images[k, 0].numpy())
        by_pil = torch.tensor(list(digit.resize((20, 20), Image.BILINEAR).tobytes())).view(20, 20)
        # PIL computes in fixed point and torch in float: a pixel may round the other way,
        # and their kernels' edge handling differs by a fraction of a grey level.
        assert (by_pil - small.images[k, 0].int()).abs().max() <= 2


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


def test_image_crop_keeps_the_centre_of_every_digit_at_its_resolution(tmp_path):
    native = load("bundled", "test")
    crop = load("bundled", "test", image_crop=20)
    assert crop.images.shape == (1000, 1, 20, 20) and crop.images.is_contiguous()
    assert torch.equal(crop.images, native.images[..., 4:24, 4:24])
    assert torch.equal(crop.labels, native.labels)
    # after image_size: the centre of the resized images
    both = load("bundled", "test", image_size=24, image_crop=20)
    assert torch.equal(both.images, load("bundled", "test", image_size=24).images[..., 2:22, 2:22])
    with pytest.raises(UserError, match=r"image_crop 30 is larger than the bundled images \(28 x 28\)"):
        load("bundled", "test", image_crop=30)
    for bad in (0, -1, 1.5):
        with pytest.raises(UserError, match=f"image_crop {bad!r} is invalid"):
            load("bundled", image_crop=bad)
    with pytest.raises(UserError, match="image_crop applies to images held in memory"):
        load(f"folder:{tmp_path}", image_crop=20, augment="paper")

