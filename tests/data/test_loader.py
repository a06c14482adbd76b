import io

import pytest
import torch

from resnets.data import Dataset, Loader, Normalizer
from resnets.errors import UserError


@pytest.fixture
def dataset():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8, generator=generator)
    return Dataset(images, torch.arange(50), [str(i) for i in range(50)], "toy")


def _all(loader, epoch, start=0):
    return list(loader.batches(epoch, start))


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b))


def test_one_seed_one_sequence_of_batches(dataset):
    make = lambda seed: Loader(dataset, 16, shuffle=True, pad=2, flip=True, normalizer=None, seed=seed)
    assert _same(_all(make(4), 0), _all(make(4), 0))
    assert not _same(_all(make(4), 0), _all(make(5), 0))
    assert not _same(_all(make(4), 0), _all(make(4), 1))  # each epoch its own permutation


def test_resuming_at_batch_i_gives_the_same_batches(dataset):
    loader = Loader(dataset, 8, shuffle=True, pad=2, flip=True, normalizer=None, seed=1)
    whole = _all(loader, 3)
    assert _same(_all(loader, 3, start=4), whole[4:])
    fresh = Loader(dataset, 8, shuffle=True, pad=2, flip=True, normalizer=None, seed=1)
    assert _same(list(fresh.batches(3)), whole)


def test_last_partial_batch_policy(dataset):
    kept = Loader(dataset, 16, shuffle=True, normalizer=None, drop_last=False)
    dropped = Loader(dataset, 16, shuffle=True, normalizer=None, drop_last=True)
    assert len(kept) == 4 and [len(y) for _, y in kept] == [16, 16, 16, 2]
    assert len(dropped) == 3 and [len(y) for _, y in dropped] == [16, 16, 16]
    labels = torch.cat([y for _, y in kept.batches(2)])
    assert sorted(labels.tolist()) == list(range(50))  # every image once per epoch


def test_batches_carry_their_own_images(dataset):
    loader = Loader(dataset, 10, shuffle=True, normalizer=None, seed=2)
    for x, y in loader:
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert torch.allclose(x * 255, dataset.images[y].float(), atol=1e-3)
    ordered = Loader(dataset, 10, shuffle=False, normalizer=None)
    assert torch.cat([y for _, y in ordered]).tolist() == list(range(50))


def test_channels_last_output(dataset):
    x, _ = next(iter(Loader(dataset, 4, shuffle=False, pad=1, normalizer=None, channels_last=True)))
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_pixel_mean_normaliser_centres_every_pixel(dataset):
    normalizer = Normalizer.fit("pixel_mean", dataset.images)
    out = normalizer(dataset.images)
    assert out.dtype == torch.float32 and out.mean(0).abs().max() < 1e-5
    assert torch.allclose(out * 255 + normalizer.mean, dataset.images.float(), atol=1e-3)


def test_channel_normaliser_standardises_each_channel(dataset):
    out = Normalizer.fit("channel", dataset.images)(dataset.images.float())
    assert torch.allclose(out.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(out.std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-3)


@pytest.mark.parametrize("kind", ["pixel_mean", "channel", "none"])
def test_normaliser_state_survives_a_weights_only_load(dataset, kind):
    normalizer = Normalizer.fit(kind, dataset)
    buffer = io.BytesIO()
    torch.save(normalizer.state_dict(), buffer)
    buffer.seek(0)
    restored = Normalizer.from_state_dict(torch.load(buffer, weights_only=True))
    assert restored.kind == kind and torch.equal(restored(dataset.images), normalizer(dataset.images))


def test_bad_arguments_are_user_errors(dataset):
    with pytest.raises(UserError, match="batch_size 0"):
        Loader(dataset, 0, shuffle=True, normalizer=None)
    with pytest.raises(UserError, match="unknown normalisation 'zca'"):
        Normalizer.fit("zca", dataset.images)


def test_normaliser_leaves_a_float_input_untouched(dataset):
    images = dataset.images.float()
    before = images.clone()
    Normalizer.fit("channel", dataset.images)(images)
    assert torch.equal(images, before)


def test_empty_validation_split_gives_no_batches(dataset):
    empty = dataset.subset(torch.zeros(0, dtype=torch.int64), "val")
    loader = Loader(empty, 8, shuffle=False, normalizer=None, drop_last=False)
    assert len(loader) == 0 and list(loader) == []
