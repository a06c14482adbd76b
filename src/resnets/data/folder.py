"""Image folders: `folder:PATH` with PATH/train/<class>/<image> and PATH/val/<class>/...

As with ImageNet, `val/` serves as the test split; "train" and "val" are drawn from `train/`.
An image is any file with an extension of a format Pillow reads (PNG, JPEG, GIF, BMP, WEBP,
TIFF, ...); the scan decides by name alone, never opening a file, so a tree of 1.28 million
images is listed in seconds. Anything else in a class folder is skipped and reported in one
warning. A file with an image's name that cannot be decoded is found when it is decoded: a
`UserError` naming it, or, with `skip_bad_images`, left out and counted. Every image becomes
8-bit RGB (`resnets.data.images`).

Two ways to use a tree (the `augment` setting, `resnets.data.views`):

- "pad-crop" (small images): each image optionally resized so its shorter side is
  `image_size` and centre-cropped to a square (without `image_size` all images must share one
  size). A split that fits in memory is decoded once and cached as a uint8 tensor file in
  PATH/.resnets-cache/, named by a hash of the folder's contents (relative paths, sizes,
  modification times) and the image size, so the next run loads it instead of decoding, and
  any added, removed or changed file makes a new cache. A split larger than
  `max_memory_bytes` becomes a `StreamingFolder` that DataLoader workers decode batch by batch.
- "paper" / "random-resized" (ImageNet): always a `StreamingFolder` of the files as they are;
  the Loader's workers cut each image's view (a random crop for training, the centre crop or
  ten crops for evaluation) at `crop_size`.

Class names: the class folders' names (ImageNet's WordNet ids), with display names from an
optional mapping file in PATH (CLASS_NAME_FILES): one class per line, the folder name, then
whitespace, then its name ("n01440764 tench, Tinca tinca"; words.txt's tab-separated lines
too). Lines for other folders are ignored.
"""

from __future__ import annotations

import hashlib
import os
import random
import warnings
from pathlib import Path

import torch

from resnets.data.dataset import Dataset, resolve_val_fraction, select, val_size
from resnets.data.images import open_image, to_tensor
from resnets.data.scan import FileList, class_folders, class_names, no_class_folders, scan
from resnets.data.views import AUGMENTS, View, check_sizes
from resnets.atomic import atomic_open
from resnets.errors import UserError

CACHE_DIR = ".resnets-cache"
CACHE_VERSION = 2  # 2: the cache records which files were decoded (skip_bad_images)
DECODE_WORKERS_ABOVE = 2_000  # decode in parallel workers only when it pays for their start-up
SKIP_HINT = "skip_bad_images (--skip-bad-images) skips unreadable files and counts them"



def decode(path: Path, image_size: int | None) -> torch.Tensor:
    """One image as a uint8 RGB tensor (3, H, W), resized and centre-cropped if image_size is set."""
    from PIL import Image

    with open_image(path) as file:
        image, _ = file.rgb()
        if image_size is not None:
            width, height = image.size
            scale = image_size / min(width, height)
            new_size = (max(image_size, round(width * scale)), max(image_size, round(height * scale)))
            image = image.resize(new_size, Image.BILINEAR)
            left, top = (new_size[0] - image_size) // 2, (new_size[1] - image_size) // 2
            image = image.crop((left, top, left + image_size, top + image_size))
        return to_tensor(image)  # (3, H, W)


def _header_size(path: Path) -> tuple[int, int]:
    """(width, height) without decoding the pixels."""
    with open_image(path) as file:
        return file.size


class StreamingFolder(torch.utils.data.Dataset):
    """A split of an image folder decoded on demand: for trees too large for memory.

    Like `Dataset` but without `.images`: `.files` (a `FileList`), `.labels` (int64),
    `.classes`, `.class_names`, `.name`, `.default_flip`, `.default_pad`; `ds[i]` -> (uint8
    image (3, S, S), label). `Loader` streams it through DataLoader workers.

    image_size: "pad-crop" images: each decoded to this square (None: as stored).
    crop_size, resize_size: set for "paper" / "random-resized" trees, whose files are kept as
        they are and cut into views (`resnets.data.views.View`); `ds[i]` is the centre view.
    skip_bad: `fetch` gives an unreadable file's message instead of raising.
    """

    def __init__(self, files, labels, classes, name, image_size, split, *, crop_size=None,
                 resize_size=None, skip_bad=False, class_names=None):
        self.files = files if isinstance(files, FileList) else FileList.from_paths(files)
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.classes = classes
        self.class_names = class_names
        self.name = name
        self.image_size = image_size
        self.crop_size = crop_size
        self.resize_size = resize_size
        self.split = split
        self.skip_bad = skip_bad
        self.default_flip = True
        self.default_pad = 0 if crop_size is not None else Dataset.default_pad

    def __len__(self) -> int:
        return len(self.files)

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        """(C, H, W) of every image, when the settings say it without decoding one (a view's
        crop, or the "pad-crop" square); None for images at their stored size."""
        side = self.crop_size or self.image_size
        return None if side is None else (3, side, side)

    @property
    def view(self) -> View | None:
        """The evaluation view of a tree of files kept as they are (None for "pad-crop")."""
        return None if self.crop_size is None else View("center", self.crop_size, self.resize_size)

    def read(self, index: int, view: View | None = None, rng: random.Random | None = None) -> torch.Tensor:
        """Image `index` decoded: through `view` (or the tree's own: centre crop or fixed square)."""
        path = self.files[index]
        view = view or self.view
        try:
            return decode(path, self.image_size) if view is None else view.read(path, rng)
        except UserError as error:
            raise UserError(f"{error}; {SKIP_HINT}") if not self.skip_bad else error from None

    def fetch(self, index: int, view: View | None = None, rng: random.Random | None = None
              ) -> torch.Tensor | str:
        """`read`, but with skip_bad an unreadable file gives its message (a str) instead."""
        try:
            return self.read(index, view, rng)
        except UserError as error:
            if not self.skip_bad:
                raise
            return str(error)

    def __getitem__(self, index: int):
        return self.read(index), self.labels[index]

    def subset(self, indices: torch.Tensor, split: str) -> "StreamingFolder":
        return StreamingFolder(self.files.take(indices.numpy()), self.labels[indices], self.classes,
                               self.name, self.image_size, split, crop_size=self.crop_size,
                               resize_size=self.resize_size, skip_bad=self.skip_bad,
                               class_names=self.class_names)

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """Up to n images (uint8, (n, 3, S, S)) drawn with a fixed seed: to fit a Normalizer."""
        chosen = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        images, _, _ = _decode_all(self.subset(chosen.sort().values, self.split))
        return images


def worker_error(error: Exception) -> UserError:
    """The one-line UserError inside a DataLoader worker's wrapped traceback."""
    lines = [line for line in str(error).splitlines() if line.startswith("resnets.errors.UserError: ")]
    return UserError(lines[-1].split(": ", 1)[1] if lines else str(error).splitlines()[0])


class _Fetch(torch.utils.data.Dataset):
    """What `_decode_all`'s workers run: i -> (i, image, or its message when skipping)."""

    def __init__(self, stream: StreamingFolder):
        self.stream = stream

    def __len__(self) -> int:
        return len(self.stream)

    def __getitem__(self, index: int):
        return index, self.stream.fetch(index)


def _as_list(items: list) -> list:
    return items  # a module-level function: picklable for spawned workers


def skipped_line(messages: list[str], where: str) -> str:
    """One line for the images skipped as unreadable: how many, and the first one's message."""
    return (f"{where}: skipped {len(messages)} unreadable image{'s' if len(messages) > 1 else ''} "
            f"(e.g. {messages[0]})")


def _decode_all(stream: StreamingFolder) -> tuple[torch.Tensor, list[int], list[str]]:
    """(all images of `stream` stacked (N, 3, H, W), the indices they come from, the messages
    of the files left out).

    An unreadable file raises its UserError, or, when the stream skips bad files, is left out;
    images of mixed sizes are an error.
    """
    workers = min(4, os.cpu_count() or 1) if len(stream) > DECODE_WORKERS_ABOVE else 0
    loader = torch.utils.data.DataLoader(_Fetch(stream), batch_size=64, num_workers=workers,
                                         collate_fn=_as_list)
    images, kept, bad, first = [], [], [], None
    try:
        for batch in loader:
            for index, image in batch:
                if isinstance(image, str):
                    bad.append(image)
                    continue
                if first is None:
                    first = image.shape
                elif image.shape != first:
                    raise UserError(f"image {stream.files[index]} is {image.shape[2]}x{image.shape[1]} but "
                                    f"{stream.files[kept[0]]} is {first[2]}x{first[1]}: images of mixed sizes "
                                    f"need --image-size")
                images.append(image)
                kept.append(index)
    except UserError as error:
        raise worker_error(error) if workers else error from None
    if not images:
        raise UserError(f"{stream.name}: none of the {len(stream)} images could be read (e.g. {bad[0]})")
    return torch.stack(images), kept, bad


def cache_key(files, root: Path, image_size: int | None) -> str:
    """A hash of the split's contents: relative paths, sizes, mtimes, and the image size."""
    digest = hashlib.sha256(f"v{CACHE_VERSION} size={image_size}\n".encode())
    for path in files:
        stat = path.stat()
        digest.update(f"{path.relative_to(root).as_posix()}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def _load_cached(stream: StreamingFolder, root: Path, part: str) -> tuple[torch.Tensor, list[int]]:
    """(the decoded images of one split folder, the indices of the files they come from),
    from the cache when its key matches. A cache that left unreadable files out serves only a
    stream that skips them (and repeats its warning)."""
    key = cache_key(stream.files, root, stream.image_size)
    cache_dir = root / CACHE_DIR
    prefix = f"{part}-{stream.image_size or 'native'}-"
    path = cache_dir / f"{prefix}{key}.pt"
    if path.is_file():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
            images, kept, bad = cached["images"], cached["kept"].tolist(), cached["skipped"]
            if (cached.get("key") == key and images.dtype == torch.uint8 and images.shape[0] == len(kept)
                    and (len(kept) == len(stream) or stream.skip_bad)):
                if bad:
                    warnings.warn(skipped_line(bad, stream.name), stacklevel=3)
                return images, kept
        except Exception:  # a damaged cache is rebuilt, never trusted
            pass
    images, kept, bad = _decode_all(stream)
    if bad:
        warnings.warn(skipped_line(bad, stream.name), stacklevel=3)
    try:
        cache_dir.mkdir(exist_ok=True)
        for stale in cache_dir.glob(f"{prefix}*.pt"):
            stale.unlink(missing_ok=True)
        _save_atomic({"key": key, "images": images, "kept": torch.tensor(kept, dtype=torch.int64),
                      "skipped": bad, "labels": stream.labels, "classes": stream.classes}, path)
    except OSError as error:
        warnings.warn(f"cannot write the image cache in {cache_dir} ({error}); images will be decoded again next run")
    return images, kept


def _save_atomic(value: dict, path: Path) -> None:
    """torch.save to a temporary file beside `path`, then rename: never a half-written cache."""
    with atomic_open(path, "wb") as file:
        torch.save(value, file)


def _memory_limit() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def _train_classes(train: Path) -> list[str]:
    """train/'s class folders (the label order), without listing their files."""
    if not train.is_dir():
        raise UserError(f"{train} is not a folder: expected train/ with one subfolder per class")
    found = class_folders(train)
    if not found:
        raise no_class_folders(train)
    if len(found) < 2:
        raise UserError(f"{train} has one class folder ({found[0]}/): a classifier needs at least two "
                        f"classes, one subfolder of images per class")
    return found


def load_folder(path: str, split: str, seed: int = 0, val_fraction: float | None = None,
                image_size: int | None = None, max_memory_bytes: int | None = None, *,
                augment: str = "pad-crop", crop_size: int = 224, resize_size: int | None = None,
                skip_bad_images: bool = False):
    """One split of an ImageFolder tree: a Dataset, or a StreamingFolder when too large, or
    always a StreamingFolder of the files as they are for augment "paper" | "random-resized"
    (their views are crop_size squares; resize_size: the evaluation resize, None: crop x 8/7)."""
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise UserError(f"image_size {image_size!r} is invalid: expected a positive integer")
    if augment not in AUGMENTS:
        raise UserError(f"unknown augment {augment!r}: expected one of {', '.join(AUGMENTS)}")
    native = augment != "pad-crop"
    if native:
        if image_size is not None:
            raise UserError(f"image_size applies to augment pad-crop (images resized once to a square); augment "
                            f"{augment} cuts crop_size x crop_size views from the images as they are: drop "
                            f"image_size and set crop_size")
        resize_size = check_sizes(crop_size, resize_size)
    root = Path(path).expanduser()
    if not path or not root.is_dir():
        raise UserError(f"image folder {root} does not exist: expected a folder with train/ and val/")
    part = "val" if split == "test" else "train"
    if split == "test":
        classes = _train_classes(root / "train")
        if not (root / "val").is_dir():
            raise UserError(f"{root / 'val'} is not a folder: the test split is {root.name}/val/<class>/<image>, "
                            f"beside train/ (for ImageNet: its 50,000 validation images sorted into one folder "
                            f"per WordNet id, as in train/)")
        files, labels, _ = scan(root / "val", classes)
    else:
        files, labels, classes = scan(root / "train", None)
    name = f"folder:{path}"
    stream = StreamingFolder(files, labels, classes, name, image_size, "test" if split == "test" else "trainval",
                             crop_size=crop_size if native else None, resize_size=resize_size if native else None,
                             skip_bad=skip_bad_images, class_names=class_names(root, classes))
    if native:
        whole = stream
    else:
        whole = _held_or_streamed(stream, root, part, max_memory_bytes)
    if split == "test":
        return whole
    return select(whole, split, seed, val_size(len(whole), resolve_val_fraction(val_fraction)))


def _held_or_streamed(stream: StreamingFolder, root: Path, part: str, max_memory_bytes: int | None):
    """("pad-crop") The split decoded into memory (cached), or `stream` when it would not fit."""
    files, image_size = stream.files, stream.image_size
    if image_size is None:
        width, height = _header_size(files[0])
    else:
        width = height = image_size
    limit = _memory_limit() if max_memory_bytes is None else max_memory_bytes
    if len(files) * 3 * width * height > limit:
        if image_size is None:
            for file in files:
                if _header_size(file) != (width, height):
                    size = _header_size(file)
                    raise UserError(f"image {file} is {size[0]}x{size[1]} but {files[0]} is {width}x{height}: "
                                    f"images of mixed sizes need --image-size")
        return stream
    images, kept = _load_cached(stream, root, part)
    labels = stream.labels[kept] if len(kept) < len(stream) else stream.labels
    return Dataset(images, labels, stream.classes, stream.name, default_flip=True, split=stream.split,
                   class_names=stream.class_names)
