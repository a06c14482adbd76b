"""The ImageNet half of the data room: views cut in DataLoader workers from images of any size
(augment "paper" | "random-resized"), centre and ten-crop evaluation views, reduced-size JPEG
decoding, a scan that never opens a file, and unreadable files found when decoded."""

import math
import random

import numpy as np
import pytest
import torch
from PIL import Image

import resnets.data.images as images_module
import resnets.data.views as views
from photo_trees import PHOTO_SIZES, photo
from resnets.data import Dataset, Loader, Normalizer, StreamingFolder, load
from resnets.data.augment import IMAGENET_EIGENVALUES, IMAGENET_EIGENVECTORS, lighting
from resnets.errors import UserError


def _load(tree, split="train", **options):
    options.setdefault("augment", "paper")
    if split != "test":
        options.setdefault("val_fraction", 0)
    return load(f"folder:{tree}", split, **options)


def _batches(loader, epoch=0, start=0):
    return list(loader.batches(epoch, start))


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b))


def _tensor(image) -> torch.Tensor:
    """A PIL RGB image as uint8 (3, H, W)."""
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ---------------------------------------------------------------- geometry (pure functions)

def test_paper_box_samples_shorter_sides_over_the_whole_range():
    rng = random.Random(0)
    sides = []
    for _ in range(3000):
        width, height = rng.choice([(500, 375), (375, 500), (180, 240), (1000, 1000)])
        side, box = views.paper_box(width, height, rng, 224)
        sides.append(side)
        assert 0 <= box.left < box.right <= width and 0 <= box.top < box.bottom <= height
        # the crop is 224 pixels of an image whose shorter side was resized to `side`
        short = min(width, height)
        assert box.width == pytest.approx(224 * width / views.resized_size(width, height, side)[0])
        assert min(box.width, box.height) == pytest.approx(224 * short / side, rel=0.01)
    assert min(sides) == 256 and max(sides) == 480  # the paper's [256, 480], both ends
    counts = np.bincount(np.array(sides) - 256)
    assert counts.min() > 0 and abs(np.mean(sides) - 368) < 5  # every size, uniformly


def test_paper_sides_scale_with_the_crop():
    assert views.paper_sides(224) == (256, 480)
    assert views.paper_sides(112) == (128, 240)
    assert views.default_resize_size(224) == 256


def test_random_resized_box_keeps_area_and_aspect_in_range():
    rng = random.Random(1)
    fractions, ratios = [], []
    for _ in range(3000):
        box = views.random_resized_box(500, 375, rng)
        assert 0 <= box.left < box.right <= 500 and 0 <= box.top < box.bottom <= 375
        fractions.append(box.width * box.height / (500 * 375))
        ratios.append(box.width / box.height)
    assert 0.075 < min(fractions) < 0.1 and max(fractions) > 0.95  # the 8%..100% range is used
    assert min(ratios) > 0.74 and max(ratios) < 1.35 and min(ratios) < 0.8 and max(ratios) > 1.25
    # A strip no draw fits falls back to its largest centred region with an aspect ratio in range.
    strip = views.random_resized_box(1000, 50, random.Random(0))
    assert strip.height == 50 and strip.width == round(50 * 4 / 3) and strip.left == (1000 - 67) // 2


def test_five_crops_are_the_corners_and_the_centre():
    assert views.corner_offsets(341, 256, 224) == [(0, 0), (117, 0), (0, 32), (117, 32), (58, 16)]


# ---------------------------------------------------------------- the scan

def test_the_scan_opens_no_file(photo_tree, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the scan opened an image")

    monkeypatch.setattr(Image, "open", refuse)
    train = _load(photo_tree)
    assert isinstance(train, StreamingFolder) and len(train) == 2 * len(PHOTO_SIZES)
    assert train.labels.tolist() == [0] * 8 + [1] * 8
    assert train.files[9] == photo_tree / "train" / "n02102040" / "n02102040_1.JPEG"
    assert train.files.nbytes() < 2000  # names packed in one bytes object, no Path per file
    assert [p.name for p in train.files.take([3, 0])] == ["n01440764_3.JPEG", "n01440764_0.JPEG"]


def test_a_streaming_folder_can_be_made_from_a_list_of_paths(photo_tree):
    paths = sorted((photo_tree / "val").rglob("*.JPEG"))
    stream = StreamingFolder(paths, [0, 0, 1, 1], ["a", "b"], "mine", None, "test", crop_size=64,
                             resize_size=73)
    assert list(stream.files) == paths and stream[3][0].shape == (3, 64, 64)


def test_a_tree_without_val_is_explained(photo_tree):
    import shutil

    shutil.rmtree(photo_tree / "val")
    assert len(_load(photo_tree)) == 16  # training needs train/ only
    with pytest.raises(UserError, match=r"photos/val is not a folder: the test split is photos/val/<class>/<image>, "
                                        r"beside train/ \(for ImageNet: its 50,000 validation images sorted"):
        _load(photo_tree, "test")


def test_a_flat_val_folder_says_how_to_sort_it(photo_tree):
    import shutil

    for path in list((photo_tree / "val").rglob("*.JPEG")):
        path.rename(photo_tree / "val" / path.name)
    for folder in (photo_tree / "val").iterdir():
        if folder.is_dir():
            shutil.rmtree(folder)
    with pytest.raises(UserError, match=r"val holds 4 image files but no class subfolders.*sorted into one folder "
                                        r"per WordNet id"):
        _load(photo_tree, "test")


@pytest.mark.parametrize("file_name, text", [
    ("classes.txt", "n01440764 tench, Tinca tinca\nn99999999 not a class here\n"),
    ("words.txt", "n00001740\tentity\nn01440764\ttench, Tinca tinca\n"),
    ("LOC_synset_mapping.txt", "n01440764 tench, Tinca tinca\n"),
])
def test_class_names_come_from_a_mapping_file(photo_tree, file_name, text):
    (photo_tree / file_name).write_text(text)
    train = _load(photo_tree)
    assert train.classes == ["n01440764", "n02102040"]  # labels stay the folders
    assert train.class_names == ["tench, Tinca tinca", "n02102040"]  # unnamed: its folder name
    assert _load(photo_tree, "test").class_names == train.class_names


def test_a_mapping_file_that_names_no_class_is_reported(photo_tree):
    (photo_tree / "classes.txt").write_text("tench\ngoldfish\n")
    with pytest.warns(UserWarning, match=r"classes.txt names none of train/'s class folders.*'FOLDER NAME'"):
        assert _load(photo_tree).class_names is None


# ---------------------------------------------------------------- views and the loader

def test_training_views_have_the_crop_shape_and_pixel_range(photo_tree):
    train = _load(photo_tree)
    for augment in ("paper", "random-resized"):
        loader = Loader(train, 8, shuffle=True, flip=True, augment=augment, normalizer=None, workers=0)
        batches = _batches(loader)
        assert len(batches) == 2
        for x, y in batches:
            assert x.shape == (8, 3, 224, 224) and x.dtype == torch.float32 and y.dtype == torch.int64
            assert 0 <= x.min() and x.max() <= 1 and x.std() > 0.05  # pixels / 255, no lighting
    with_lighting = Loader(train, 8, shuffle=True, augment="paper", normalizer=None, workers=0)
    assert with_lighting.lighting == 0.1  # the paper's colour augmentation by default
    without = Loader(train, 8, shuffle=True, augment="paper", normalizer=None, workers=0, lighting=0)
    (lit, _), (plain, _) = _batches(with_lighting)[0], _batches(without)[0]
    shift = lit - plain  # the same crops, each image shifted by one colour
    assert shift.abs().max() > 1e-3
    assert torch.allclose(shift, shift[:, :, :1, :1].expand_as(shift), atol=1e-5)


def test_a_view_is_the_region_of_its_box_resampled_to_the_crop(photo_tree):
    path = photo_tree / "train" / "n01440764" / "n01440764_0.JPEG"  # 500 x 375: decoded in full
    view = views.View("paper", 224, 256)
    got = view.read(path, random.Random(7))
    _, box = views.paper_box(500, 375, random.Random(7), 224)
    with Image.open(path) as image:
        expected = image.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR,
                                               box=(box.left, box.top, box.right, box.bottom))
    assert torch.equal(got, _tensor(expected))


def test_the_scale_range_the_loader_samples_is_the_papers(photo_tree, monkeypatch):
    sides = []
    real = views.paper_box

    def recording(*args, **kwargs):
        side, box = real(*args, **kwargs)
        sides.append(side)
        return side, box

    monkeypatch.setattr(views, "paper_box", recording)
    loader = Loader(_load(photo_tree), 16, shuffle=True, augment="paper", normalizer=None, workers=0)
    for epoch in range(12):
        _batches(loader, epoch)
    assert len(sides) == 12 * 16 and 256 <= min(sides) < 290 and 450 < max(sides) <= 480


@pytest.mark.parametrize("augment", ["paper", "random-resized"])
def test_the_same_seed_epoch_and_index_give_the_same_crop_with_0_1_or_2_workers(photo_tree, augment):
    train = _load(photo_tree)
    normalizer = Normalizer.fit("pixel_mean", train)
    options = dict(shuffle=True, flip=True, augment=augment, normalizer=normalizer, seed=3)
    by_workers = [_batches(Loader(train, 6, workers=workers, **options), epoch=2) for workers in (0, 1, 2)]
    assert _same(by_workers[0], by_workers[1]) and _same(by_workers[0], by_workers[2])
    other_epoch = _batches(Loader(train, 6, workers=0, **options), epoch=3)
    assert not _same(by_workers[0], other_epoch)


def test_an_image_gets_the_same_crop_whatever_batch_it_is_in(photo_tree):
    train = _load(photo_tree)
    unshuffled = Loader(train, 4, shuffle=False, augment="paper", normalizer=None, workers=0, lighting=0)
    small_batches = Loader(train, 2, shuffle=False, augment="paper", normalizer=None, workers=0, lighting=0)
    assert torch.equal(torch.cat([x for x, _ in unshuffled.batches(5)]),
                       torch.cat([x for x, _ in small_batches.batches(5)]))


def test_resuming_mid_epoch_gives_the_same_batches(photo_tree):
    train = _load(photo_tree)
    options = dict(shuffle=True, flip=True, augment="random-resized", normalizer=None, seed=1, workers=1,
                   lighting=0.1)
    whole = _batches(Loader(train, 4, **options), epoch=4)
    resumed = _batches(Loader(train, 4, **options), epoch=4, start=2)
    assert len(whole) == 4 and _same(resumed, whole[2:])


def test_evaluation_views_center_and_ten_crops(photo_tree):
    test = _load(photo_tree, "test")
    assert test.default_pad == 0 and test[0][0].shape == (3, 224, 224)
    centre = torch.stack([test[i][0] for i in range(len(test))])
    loader = Loader(test, 3, shuffle=False, normalizer=None, crops=10, drop_last=False, workers=0)
    batches = _batches(loader)
    assert [tuple(x.shape) for x, _ in batches] == [(3, 10, 3, 224, 224), (1, 10, 3, 224, 224)]
    ten = torch.cat([x for x, _ in batches])  # (4, 10, 3, 224, 224)
    assert torch.equal(ten[:, 5:], ten[:, :5].flip(-1))  # crops 5..9 are the flips of 0..4
    assert torch.allclose(ten[:, 4] * 255, centre.float(), atol=1e-3)  # crop 4 is the centre view
    path = test.files[0]  # 500 x 375 -> 341 x 256: corner crops of the resized image, by hand
    with Image.open(path) as image:
        resized = image.convert("RGB").resize((341, 256), Image.Resampling.BILINEAR)
    top_right = resized.crop((117, 0, 341, 224))
    assert torch.allclose(ten[0, 1] * 255, _tensor(top_right).float(), atol=1e-3)


def test_the_resize_size_sets_the_evaluation_scale(photo_tree):
    at_256 = _load(photo_tree, "test")[0][0]
    at_232 = _load(photo_tree, "test", resize_size=232)[0][0]
    with Image.open(photo_tree / "val" / "n01440764" / "n01440764_0.JPEG") as image:
        resized = image.convert("RGB").resize((309, 232), Image.Resampling.BILINEAR)  # 500x375 -> 309x232
    centre = resized.crop((42, 4, 266, 228))
    assert torch.equal(at_232, _tensor(centre)) and not torch.equal(at_232, at_256)
    with pytest.raises(UserError, match="resize_size 200 is invalid: expected an integer >= crop_size 224"):
        _load(photo_tree, "test", resize_size=200)


def test_large_jpegs_are_decoded_at_reduced_size(tmp_path, monkeypatch):
    path = tmp_path / "big.jpg"
    photo(1600, 1200, seed=3).save(path, quality=90)
    decoded = []
    real = images_module.ImageFile.rgb

    def spy(self, shrink=1.0):
        image, scale = real(self, shrink)
        decoded.append((image.size, scale))
        return image, scale

    monkeypatch.setattr(images_module.ImageFile, "rgb", spy)
    centre = views.View("center", 224, 256).read(path)
    assert decoded[-1] == ((400, 300), 0.25)  # shorter side 1200 -> 256: the decoder's 1/4 scale
    monkeypatch.setattr(images_module.ImageFile, "rgb", real)
    with Image.open(path) as image:
        full = image.convert("RGB").resize((341, 256), Image.Resampling.BILINEAR).crop((58, 16, 282, 240))
    difference = (centre.float() - _tensor(full).float()).abs()
    assert difference.mean() < 3  # the same picture, to within JPEG's own noise
    small = tmp_path / "small.jpg"
    photo(500, 375, seed=4).save(small, quality=90)
    monkeypatch.setattr(images_module.ImageFile, "rgb", spy)
    views.View("paper", 224, 256).read(small, random.Random(0))
    assert decoded[-1][1] == 1.0  # a 224 crop of a 500 x 375 photo needs every pixel


def test_grayscale_cmyk_and_16_bit_images_become_rgb(photo_tree):
    train = _load(photo_tree)
    view = views.View("center", 224, 256)
    for k in (5, 6, 7):  # L JPEG, CMYK JPEG, 16-bit PNG
        image = view.read(train.files[k])
        assert image.shape == (3, 224, 224) and image.dtype == torch.uint8
        assert image.float().std() > 10  # a picture, not a flat or clipped one
    gray = view.read(train.files[5])
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    cmyk = train.files[6].with_name("solid.jpg")
    Image.new("CMYK", (300, 300), (0, 255, 255, 0)).save(cmyk, quality=95)  # pure red in CMYK
    red = view.read(cmyk).float().mean((1, 2))
    assert red[0] > 200 and red[1] < 50 and red[2] < 50


def test_a_truncated_jpeg_mid_epoch_names_the_file(photo_tree):
    bad = photo_tree / "train" / "n02102040" / "n02102040_2.JPEG"
    _truncate(bad)
    train = _load(photo_tree)  # the scan does not notice: it goes by name
    loader = Loader(train, 4, shuffle=False, augment="paper", normalizer=None, workers=1)
    batches = loader.batches(0)
    assert next(batches)[0].shape[0] == 4  # the first batches are fine
    with pytest.raises(UserError, match=r"^cannot read image .*n02102040_2.JPEG \(image file is truncated.*\)"
                                        r": expected an image file Pillow reads; .*--skip-bad-images[^\n]*$"):
        list(batches)


def test_skipping_bad_files_leaves_them_out_of_their_batch_and_counts_them(photo_tree):
    bad = photo_tree / "train" / "n02102040" / "n02102040_2.JPEG"
    _truncate(bad)
    (photo_tree / "train" / "n01440764" / "n01440764_9.jpg").write_bytes(b"\xff\xd8 not a jpeg at all")
    train = _load(photo_tree, skip_bad_images=True)
    assert len(train) == 17
    loader = Loader(train, 17, shuffle=False, augment="paper", normalizer=None, workers=1)
    ((images, labels),) = _batches(loader)
    assert images.shape[0] == labels.shape[0] == 15
    assert labels.tolist() == [0] * 8 + [1] * 7  # the labels of the images kept, in order
    assert len(loader.skipped) == 2 and any("n02102040_2.JPEG" in m for m in loader.skipped)
    _batches(loader, 1)
    assert len(loader.skipped) == 2  # each file once, however many epochs meet it


def test_bad_files_in_a_small_tree_held_in_memory(photo_tree):
    (photo_tree / "train" / "n01440764" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg at all")
    with pytest.raises(UserError, match=r"^cannot read image .*broken.jpg \(cannot identify image file\)"):
        load(f"folder:{photo_tree}", "trainval", image_size=16)
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image \(e.g. cannot read image .*broken.jpg"):
        kept = load(f"folder:{photo_tree}", "trainval", image_size=16, skip_bad_images=True)
    assert isinstance(kept, Dataset) and kept.images.shape == (16, 3, 16, 16)
    with pytest.warns(UserWarning, match="skipped 1 unreadable image"):  # from the cache, said again
        again = load(f"folder:{photo_tree}", "trainval", image_size=16, skip_bad_images=True)
    assert torch.equal(again.images, kept.images) and torch.equal(again.labels, kept.labels)
    with pytest.raises(UserError, match="broken.jpg"):  # a cache that left it out serves only skipping
        load(f"folder:{photo_tree}", "trainval", image_size=16)


def test_views_need_a_tree_of_files_and_ten_crops_no_randomness(photo_tree):
    digits = load("bundled", "test")
    with pytest.raises(UserError, match="augment 'paper' cuts views from image files of any size"):
        Loader(digits, 4, shuffle=True, augment="paper", normalizer=None)
    with pytest.raises(UserError, match="augment 'paper' cuts crops from image files of any size: use it with "
                                        "folder:PATH"):
        load("cifar10", augment="paper")
    test = _load(photo_tree, "test")
    with pytest.raises(UserError, match="crops=10 is an evaluation view"):
        Loader(test, 4, shuffle=False, flip=True, crops=10, normalizer=None)
    with pytest.raises(UserError, match="crops 3 is invalid"):
        Loader(test, 4, shuffle=False, crops=3, normalizer=None)
    with pytest.raises(UserError, match="image_size applies to augment pad-crop"):
        _load(photo_tree, image_size=64)


def test_a_small_crop_size_scales_every_view(photo_tree):
    train = _load(photo_tree, crop_size=64)
    assert train.resize_size == 73 and train[0][0].shape == (3, 64, 64)
    x, _ = _batches(Loader(train, 4, shuffle=True, augment="paper", normalizer=None, workers=0))[0]
    assert x.shape == (4, 3, 64, 64)


# ---------------------------------------------------------------- lighting (batched)

def test_lighting_adds_one_colour_per_image_along_imagenets_principal_components():
    images = torch.zeros(4000, 3, 2, 2)
    out = lighting(images, torch.Generator().manual_seed(0), std=0.1)
    offsets = out[:, :, 0, 0]  # (N, 3)
    assert torch.equal(out, offsets.view(-1, 3, 1, 1).expand_as(out))  # the same for every pixel
    vectors = torch.tensor(IMAGENET_EIGENVECTORS)
    expected = vectors @ torch.diag((0.1 * torch.tensor(IMAGENET_EIGENVALUES)) ** 2) @ vectors.T
    assert torch.allclose(torch.cov(offsets.T), expected, atol=3e-5)  # covariance V diag(std l)^2 V^T
    scaled = lighting(images, torch.Generator().manual_seed(0), std=0.1, scale=torch.tensor([255.0] * 3))
    assert torch.allclose(scaled, out * 255, atol=1e-4)
    assert torch.equal(lighting(images, torch.Generator(), std=0.0), images)


def test_lighting_in_the_loader_is_the_same_as_before_normalising(photo_tree):
    train = _load(photo_tree)
    normalizer = Normalizer.fit("channel", train)
    options = dict(shuffle=True, augment="paper", seed=2, workers=0)
    plain = _batches(Loader(train, 8, normalizer=None, lighting=0, **options))
    lit = _batches(Loader(train, 8, normalizer=normalizer, lighting=0.1, **options))
    from resnets.data.loader import _generator

    lit_by_hand = []
    for index, (x, _) in enumerate(plain):
        before = lighting(x * 255, _generator(2, 0, index), std=0.1, scale=torch.tensor([255.0] * 3))
        lit_by_hand.append(normalizer(before))
    for (x, _), expected in zip(lit, lit_by_hand):
        assert torch.allclose(x, expected, atol=1e-4)
    assert not math.isclose(float(lit[0][0].mean()), float(normalizer(plain[0][0] * 255).mean()), abs_tol=1e-5)


def test_the_input_shape_is_known_without_decoding_a_file(photo_tree):
    _truncate(photo_tree / "train" / "n01440764" / "n01440764_0.JPEG")  # the first file
    train = _load(photo_tree, skip_bad_images=True, crop_size=96)
    assert train.image_shape == (3, 96, 96)
    from resnets.train.steps import image_shape

    assert image_shape(train) == [3, 96, 96]


def test_fitting_a_normaliser_on_large_images_works_in_small_chunks(monkeypatch):
    import resnets.data.normalize as normalize

    images = torch.randint(0, 256, (10, 3, 20, 20), dtype=torch.uint8)
    whole = {kind: Normalizer.fit(kind, images) for kind in ("pixel_mean", "channel")}
    monkeypatch.setattr(normalize, "CHUNK_VALUES", 3 * 20 * 20 * 3)  # three images a chunk
    for kind, expected in whole.items():
        chunked = Normalizer.fit(kind, images)
        assert torch.equal(chunked.mean, expected.mean) and torch.equal(chunked.std, expected.std)


def test_processes_parts_of_streamed_batches_are_the_whole_batches(photo_tree):
    # torchrun: each process decodes only its part, with the whole batch's crops, flips and
    # colour noise, so the parts put together are what one process would train on.
    train = _load(photo_tree, crop_size=32)
    options = dict(shuffle=True, flip=True, augment="paper", normalizer=None, workers=0)
    whole = _batches(Loader(train, 8, **options), epoch=1)
    parts = [_batches(Loader(train, 8, part=(rank, 2), **options), epoch=1) for rank in (0, 1)]
    assert [len(p) for p in parts] == [len(whole)] * 2
    for i, (images, labels) in enumerate(whole):
        assert [len(p[i][1]) for p in parts] == [4, 4]
        assert torch.allclose(torch.cat([p[i][0] for p in parts]), images)
        assert torch.equal(torch.cat([p[i][1] for p in parts]), labels)
