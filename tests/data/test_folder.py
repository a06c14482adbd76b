import os

import numpy as np
import pytest
import torch
from PIL import Image

import resnets.data.folder as folder_module
import resnets.data.images as images_module
from resnets.data import Loader, Normalizer, StreamingFolder, load
from resnets.errors import UserError


# The `tree` fixture holds a notes.txt: its "skipped" warning is checked once, below.
pytestmark = pytest.mark.filterwarnings("ignore:.*skipped .* in class folders")


def _solid(mode: str, size, value):
    return Image.new(mode, size, value)


def _truncate(path, size):
    """A noise PNG of `size` at `path`, cut short: its header reads, its pixels do not."""
    noise = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


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
    # The scan goes by name (a 1.28M-file tree is never opened at scan time): the broken file
    # is found when it is decoded, and named there.
    with pytest.raises(UserError, match=r"^cannot read image .*train/bird/z.png .*--skip-bad-images"):
        load(f"folder:{tree}", image_size=8)
    _truncate(tree / "train/cat/a.png", (12, 10))
    (tree / "train/bird/z.png").unlink()
    _solid("RGB", (10, 10), 0).save(tree / "train/bird/y.png")
    with pytest.raises(UserError, match=r"cannot read image .*train/cat/a.png"):
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
    _truncate(tree / "train/dog/f.png", (10, 10))
    streamed = load(f"folder:{tree}", "trainval", image_size=8, max_memory_bytes=100)
    loader = Loader(streamed, 6, shuffle=False, normalizer=None, workers=1)
    with pytest.raises(UserError, match=r"^cannot read image .*train/dog/f.png"):
        list(loader.batches(0))


def test_parallel_decoding_reports_a_bad_image_in_one_line(tree, monkeypatch):
    monkeypatch.setattr(folder_module, "DECODE_WORKERS_ABOVE", 1)  # decode through workers
    assert load(f"folder:{tree}", "trainval", image_size=8).images.shape == (6, 3, 8, 8)
    _truncate(tree / "train/cat/b.png", (10, 10))
    with pytest.raises(UserError, match=r"^cannot read image .*train/cat/b.png[^\n]*$"):
        load(f"folder:{tree}", "trainval", image_size=8)


def _two_classes(root, part="train"):
    for name in ("a", "b"):
        (root / part / name).mkdir(parents=True, exist_ok=True)
    return root / part


def test_16_bit_images_are_scaled_to_8_bits_not_clipped(tmp_path):
    train = _two_classes(tmp_path / "deep")
    gradient = (np.arange(64, dtype=np.uint32) * 65535 // 63).astype(np.uint16)[None].repeat(4, 0)
    image = Image.fromarray(gradient)  # (4, 64): 0 .. 65535 left to right
    assert image.mode == "I;16"
    image.save(train / "a" / "gradient.png")
    image.save(train / "b" / "gradient.tif")
    assert Image.open(train / "a" / "gradient.png").mode == "I;16"  # Pillow reads it back 16-bit
    ds = load(f"folder:{tmp_path / 'deep'}", "trainval", val_fraction=0)
    expected = torch.from_numpy((gradient[0].astype(np.uint32) * 255 + 32767) // 65535)
    for i in range(2):
        assert torch.equal(ds.images[i, 0, 2].long(), expected.long())  # every step of the ramp
        assert torch.equal(ds.images[i, 1], ds.images[i, 0])  # gray
    assert (ds.images == 255).float().mean() < 0.05  # clipping made 99.6% of it white


@pytest.mark.parametrize("mode, values, expected", [
    ("I;16B", [0, 257, 32768, 65535], [0, 1, 128, 255]),
    ("I", [0, 257, 32768, 65535], [0, 1, 128, 255]),  # 16-bit data in Pillow's 32-bit mode
    ("I", [-100, 0, 100, 0], [0, 128, 255, 128]),  # not 16-bit: stretched over its range
    ("F", [0.0, 0.5, 1.0, 0.25], [0, 128, 255, 64]),
])
def test_to_8bit_follows_each_mode(mode, values, expected):
    dtype = {"I;16B": ">u2", "I": "<i4", "F": "<f4"}[mode]
    image = Image.frombytes(mode, (4, 1), np.array([values], dtype=dtype).tobytes())
    converted = images_module.to_8bit(image)
    assert converted.mode == "L" and np.asarray(converted)[0].tolist() == expected


def test_every_format_pillow_reads_is_used_and_the_rest_reported_in_one_warning(tmp_path):
    from PIL import features

    train = _two_classes(tmp_path / "formats")
    colours = {"png": (10, 20, 30), "gif": (40, 50, 60), "bmp": (70, 80, 90), "tif": (100, 110, 120),
               "tiff": (130, 140, 150), "webp": (160, 170, 180)}
    if not features.check("webp"):
        del colours["webp"]
    for ext, colour in colours.items():
        _solid("RGB", (6, 6), colour).save(train / "a" / f"x.{ext}", **({"lossless": True} if ext == "webp" else {}))
    _solid("RGB", (6, 6), 0).save(train / "b" / "y.BMP")
    (train / "b" / "notes.txt").write_text("not an image")
    (train / "b" / "labels.csv").write_text("y,1\n")
    (train / "b" / "more").mkdir()
    (train / "b" / ".DS_Store").write_bytes(b"\0")  # hidden: ignored silently
    with pytest.warns(UserWarning) as caught:
        ds = load(f"folder:{tmp_path / 'formats'}", "trainval", val_fraction=0)
    assert ds.labels.tolist() == [0] * len(colours) + [1]
    got = {tuple(ds.images[i, :, 3, 3].tolist()) for i in range(len(colours))}
    assert got == set(colours.values())  # GIF's palette holds these three colours exactly
    (message,) = [str(w.message) for w in caught]
    assert "\n" not in message and message.startswith(f"{train}: skipped 3 entries in class folders: ")
    assert "2 not in a format Pillow reads (e.g. b/labels.csv)" in message
    assert "1 subfolder (not searched) (e.g. b/more)" in message


def test_one_class_folder_is_refused(tmp_path):
    (tmp_path / "one" / "train" / "cats").mkdir(parents=True)
    _solid("RGB", (6, 6), 0).save(tmp_path / "one" / "train" / "cats" / "a.png")
    with pytest.raises(UserError, match=r"train has one class folder \(cats/\): a classifier needs at least two"):
        load(f"folder:{tmp_path / 'one'}", "train")


def test_one_class_folder_is_one_line_from_the_cli(tmp_path, capsys):
    from resnets.cli import main

    (tmp_path / "one" / "train" / "cats").mkdir(parents=True)
    _solid("RGB", (6, 6), 0).save(tmp_path / "one" / "train" / "cats" / "a.png")
    assert main(["train", "--data", f"folder:{tmp_path / 'one'}", "--iters", "1", "--out", str(tmp_path),
                 "--progress", "none"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a classifier needs at least two classes" in err
