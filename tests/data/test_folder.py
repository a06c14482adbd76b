import os

import numpy as np
import pytest
import torch
from PIL import Image

import resnets.data.folder as folder_module
from resnets.data import Loader, Normalizer, StreamingFolder, load
from resnets.errors import UserError


def _solid(mode: str, size, value):
    return Image.new(mode, size, value)


@pytest.fixture
def tree(tmp_path):
    """train/ and val/ with mixed modes and sizes, PNG and JPEG; returns the root."""
    root = tmp_path / "tree"
    for part in ("train", "val"):
        for name in ("cat", "dog"):
            (root / part / name).mkdir(parents=True)
    _solid("RGB", (12, 10), (200, 10, 30)).save(root / "train/cat/a.png")
    _solid("L", (10, 10), 77).save(root / "train/cat/b.png")  # grayscale
    _solid("RGBA", (16, 10), (5, 6, 7, 128)).save(root / "train/cat/c.PNG")  # alpha dropped
    palette = Image.new("P", (10, 14))
    palette.putpalette([0, 0, 0, 9, 99, 199] + [0] * 762)
    palette.paste(1, (0, 0, 10, 14))
    palette.save(root / "train/dog/d.png")  # palette colour 1 = (9, 99, 199)
    _solid("RGB", (20, 20), (128, 128, 128)).save(root / "train/dog/e.jpg", quality=95)
    _solid("RGB", (10, 10), (1, 2, 3)).save(root / "train/dog/f.png")
    (root / "train/dog/notes.txt").write_text("not an image")
    _solid("RGB", (10, 10), (50, 60, 70)).save(root / "val/cat/g.png")
    _solid("L", (11, 10), 9).save(root / "val/dog/h.png")
    return root


def test_mixed_modes_become_rgb_resized_and_cropped(tree):
    ds = load(f"folder:{tree}", "trainval", image_size=8, val_fraction=0)
    assert ds.images.shape == (6, 3, 8, 8) and ds.images.dtype == torch.uint8
    assert ds.classes == ["cat", "dog"] and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    colours = [tuple(ds.images[i, :, 4, 4].tolist()) for i in range(6)]
    assert colours[0] == (200, 10, 30) and colours[1] == (77, 77, 77) and colours[2] == (5, 6, 7)
    assert colours[3] == (9, 99, 199) and colours[5] == (1, 2, 3)
    assert all(abs(v - 128) <= 2 for v in colours[4])  # JPEG: close, not exact
    test = load(f"folder:{tree}", "test", image_size=8)
    assert test.labels.tolist() == [0, 1] and tuple(test.images[1, :, 0, 0].tolist()) == (9, 9, 9)


def test_native_size_tree_loads_exact_pixels(tmp_path):
    root = tmp_path / "same"
    for part in ("train", "val"):
        for name, value in (("x", 10), ("y", 20)):
            (root / part / name).mkdir(parents=True)
            pixels = np.full((6, 5, 3), value, np.uint8)
            pixels[0, 1] = (1, 2, 3)
            Image.fromarray(pixels).save(root / part / name / "i.png")
    ds = load(f"folder:{root}", "test")
    assert ds.images.shape == (2, 3, 6, 5)
    assert ds.images[0, :, 0, 1].tolist() == [1, 2, 3] and ds.images[1, 0, 3, 3] == 20


def test_mixed_sizes_without_resize_is_an_error(tree):
    with pytest.raises(UserError, match=r"image .*train/cat/b.png is 10x10 but .*a.png is 12x10.*--image-size"):
        load(f"folder:{tree}", "train")


def test_cache_is_reused_then_invalidated_when_a_file_changes(tree, monkeypatch):
    first = load(f"folder:{tree}", "trainval", image_size=8)
    assert len(list((tree / ".resnets-cache").glob("train-8-*.pt"))) == 1

    real_decode = folder_module.decode
    calls = []
    monkeypatch.setattr(folder_module, "decode", lambda *a: calls.append(a) or real_decode(*a))
    again = load(f"folder:{tree}", "trainval", image_size=8)
    assert calls == [] and torch.equal(again.images, first.images)

    _solid("RGB", (10, 10), (255, 0, 0)).save(tree / "train/dog/f.png")  # same size, new content
    os.utime(tree / "train/dog/f.png", ns=(1, 1))  # and a different mtime, whatever the clock
    changed = load(f"folder:{tree}", "trainval", image_size=8)
    assert len(calls) == 6 and changed.images[5, :, 0, 0].tolist() == [255, 0, 0]
    assert len(list((tree / ".resnets-cache").glob("train-8-*.pt"))) == 1  # the stale cache is gone
    other_size = load(f"folder:{tree}", "trainval", image_size=4)
    assert other_size.images.shape[-1] == 4


def test_damaged_cache_is_rebuilt(tree):
    load(f"folder:{tree}", "trainval", image_size=8)
    (cache,) = (tree / ".resnets-cache").glob("train-8-*.pt")
    cache.write_bytes(b"garbage")
    assert load(f"folder:{tree}", "trainval", image_size=8).images.shape == (6, 3, 8, 8)


def test_bad_trees_name_the_path(tree, tmp_path):
    with pytest.raises(UserError, match="nowhere does not exist.*train/ and val/"):
        load(f"folder:{tmp_path / 'nowhere'}")
    (tree / "train/bird").mkdir()
    with pytest.raises(UserError, match=r"class folder .*train/bird has no images"):
        load(f"folder:{tree}", image_size=8)
    (tree / "train/bird/z.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(UserError, match=r"cannot read image .*train/bird/z.png"):
        load(f"folder:{tree}", image_size=8)
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    with pytest.raises(UserError, match="train has no class subfolders"):
        load(f"folder:{empty}")


def test_test_split_needs_val_folder(tree):
    import shutil

    shutil.rmtree(tree / "val")
    with pytest.raises(UserError, match=r"tree/val is not a folder"):
        load(f"folder:{tree}", "test", image_size=8)


def test_large_tree_streams_through_workers_with_the_same_batches(tree):
    in_memory = load(f"folder:{tree}", "trainval", image_size=8)
    streamed = load(f"folder:{tree}", "trainval", image_size=8, max_memory_bytes=100)
    assert isinstance(streamed, StreamingFolder) and not hasattr(streamed, "images")
    assert torch.equal(streamed.labels, in_memory.labels)
    train = load(f"folder:{tree}", "train", image_size=8, max_memory_bytes=100, val_fraction=0.5, seed=1)
    assert isinstance(train, StreamingFolder) and len(train) == 3
    normalizer = Normalizer.fit("channel", streamed)
    options = dict(shuffle=True, pad=2, flip=True, normalizer=normalizer, seed=5, drop_last=False)
    expected = list(Loader(in_memory, 4, **options).batches(1))
    got = list(Loader(streamed, 4, workers=1, **options).batches(1))
    assert len(got) == len(expected) == 2
    for (x, y), (x_ref, y_ref) in zip(got, expected):
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)


def test_streamed_tree_reports_mixed_sizes_and_bad_images(tree):
    with pytest.raises(UserError, match="mixed sizes"):
        load(f"folder:{tree}", "trainval", max_memory_bytes=100)
    (tree / "train/dog/f.png").write_bytes(b"not a png")
    streamed = load(f"folder:{tree}", "trainval", image_size=8, max_memory_bytes=100)
    loader = Loader(streamed, 6, shuffle=False, normalizer=None, workers=1)
    with pytest.raises(UserError, match=r"^cannot read image .*train/dog/f.png"):
        list(loader.batches(0))


def test_parallel_decoding_reports_a_bad_image_in_one_line(tree, monkeypatch):
    monkeypatch.setattr(folder_module, "DECODE_WORKERS_ABOVE", 1)  # decode through workers
    assert load(f"folder:{tree}", "trainval", image_size=8).images.shape == (6, 3, 8, 8)
    (tree / "train/cat/b.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match=r"^cannot read image .*train/cat/b.png[^\n]*$"):
        load(f"folder:{tree}", "trainval", image_size=8)
