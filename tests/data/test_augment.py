import pytest
import torch

from resnets.data.augment import flip, pad_crop


def _generator(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_augmentation_keeps_shape_dtype_and_device(dtype):
    images = torch.randint(0, 255, (6, 3, 9, 7)).to(dtype)
    for out in (pad_crop(images, _generator(), 4), flip(images, _generator())):
        assert out.shape == images.shape and out.dtype == dtype and out.device == images.device
    channels_last = images.contiguous(memory_format=torch.channels_last)
    assert pad_crop(channels_last, _generator(), 2).shape == images.shape


def test_flipping_twice_is_the_identity():
    images = torch.randn(64, 2, 5, 5)
    once = flip(images, _generator(3))
    assert torch.equal(flip(once, _generator(3)), images)
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(once, images)]
    kept = [torch.equal(o, i) for o, i in zip(once, images)]
    assert all(f or k for f, k in zip(flipped, kept)) and 10 < sum(flipped) < 54


def test_every_crop_lies_inside_the_padded_image():
    pad = 3
    images = torch.arange(1, 1 + 40 * 2 * 6 * 5, dtype=torch.float32).view(40, 2, 6, 5)  # all distinct, none 0
    out = pad_crop(images, _generator(1), pad)
    padded = torch.nn.functional.pad(images, (pad,) * 4)
    offsets = set()
    for image, crop in zip(padded, out):
        matches = [(t, l) for t in range(2 * pad + 1) for l in range(2 * pad + 1)
                   if torch.equal(image[:, t : t + 6, l : l + 5], crop)]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert len(offsets) > 10  # each image gets its own offset


def test_zero_pad_is_the_identity_and_one_seed_one_result():
    images = torch.randn(8, 3, 4, 4)
    assert torch.equal(pad_crop(images, _generator(), 0), images)
    assert torch.equal(pad_crop(images, _generator(7), 2), pad_crop(images, _generator(7), 2))
    assert not torch.equal(pad_crop(images, _generator(7), 2), pad_crop(images, _generator(8), 2))


@pytest.mark.parametrize("pad, do_flip", [(4, True), (4, False), (0, True), (2, True)])
def test_fused_crop_and_flip_equal_the_two_functions_in_turn(pad, do_flip):
    from resnets.data.augment import pad_crop_flip

    images = torch.randint(0, 255, (32, 3, 7, 6), dtype=torch.uint8)
    expected = pad_crop(images, _generator(9), pad)
    if do_flip:
        generator = _generator(9)
        pad_crop(images, generator, pad)  # consume the crop's draws, as in the separate path
        expected = flip(expected, generator)
    assert torch.equal(pad_crop_flip(images, _generator(9), pad, do_flip), expected)
