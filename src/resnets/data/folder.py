"""Image folders: `folder:PATH` with PATH/train/<class>/<image> and PATH/val/<class>/...

As with ImageNet, `val/` serves as the test split; "train" and "val" are drawn from `train/`.
An image is any file in a format Pillow reads (PNG, JPEG, GIF, BMP, WEBP, TIFF, ...: by
extension, then by header); anything else in a class folder is skipped and reported in one
warning. Every image becomes 8-bit RGB (grayscale, 16-bit, RGBA and palette images are
converted), optionally resized so its shorter side is `image_size` and centre-cropped to
image_size x image_size. Without `image_size` all images must share one size.

A split that fits in memory is decoded once and cached as a uint8 tensor file in
PATH/.resnets-cache/, named by a hash of the folder's contents (relative paths, sizes,
modification times) and the image size, so the next run loads it instead of decoding, and any
added, removed or changed file makes a new cache. A split larger than `max_memory_bytes`
becomes a `StreamingFolder` that DataLoader workers decode batch by batch.
"""

from __future__ import annotations

import functools
import hashlib
import os
import warnings
from pathlib import Path

import torch

from resnets.data.dataset import Dataset, resolve_val_fraction, select, val_size
from resnets.atomic import atomic_open
from resnets.errors import UserError

CACHE_DIR = ".resnets-cache"
CACHE_VERSION = 1
DECODE_WORKERS_ABOVE = 2_000  # decode in parallel workers only when it pays for their start-up


@functools.cache
def image_extensions() -> frozenset[str]:
    """Lower-case suffixes (".png", ".tif", ...) of every format the installed Pillow can read."""
    from PIL import Image

    return frozenset(ext for ext, kind in Image.registered_extensions().items() if kind in Image.OPEN)


def unreadable_reason(path: Path) -> str | None:
    """None when Pillow recognises the file's header, else why not (the pixels are not read)."""
    from PIL import Image

    try:
        with Image.open(path):
            return None
    except Exception as error:  # PIL raises many types for a truncated or foreign file
        return pillow_reason(error, path)


def pillow_reason(error: Exception, path: str | Path) -> str:
    """Why Pillow could not read `path`, for a message that names the path already."""
    return str(error).replace(f" {str(path)!r}", "") or type(error).__name__


def to_8bit(image):
    """A PIL image with 8 bits per channel: 16-bit, 32-bit and float grayscale are scaled, not clipped.

    Pillow's own `convert("L")` clips these modes at 255, so a 16-bit gradient turns almost all
    white. Unsigned 16-bit modes (I;16, I;16B, ...) map 0..65535 to 0..255; mode I the same when
    its values fit 16 bits; float values in [0, 1] map to 0..255; anything else (negative
    values, 32-bit ranges) is stretched from its own minimum and maximum. Other modes pass.
    """
    import numpy as np
    from PIL import Image

    if not (image.mode.startswith("I") or image.mode == "F"):
        return image
    values = np.asarray(image)
    low, high = (values.min(), values.max()) if values.size else (0, 0)
    if (image.mode.startswith("I;16") and not image.mode.endswith("S")) or (
            image.mode == "I" and low >= 0 and high <= 65535):
        eight = (values.astype(np.uint32) * 255 + 32767) // 65535  # round(v * 255 / 65535)
    elif image.mode == "F" and low >= 0 and high <= 1:
        eight = np.rint(values.astype(np.float32) * 255)
    elif high > low:
        eight = np.rint((values.astype(np.float32) - np.float32(low)) * np.float32(255 / (high - low)))
    else:
        eight = np.zeros(values.shape)
    return Image.fromarray(eight.astype(np.uint8), "L")


SKIPPED_KINDS = ("not in a format Pillow reads", "unreadable", "subfolder (not searched)")


def _skipped_line(folder: Path, skipped: list[tuple[Path, str, str]]) -> str:
    """One line: how many entries were skipped, of each kind (SKIPPED_KINDS), with an example."""
    parts = []
    for kind in SKIPPED_KINDS:
        items = [(path, why) for path, what, why in skipped if what == kind]
        if items:
            path, why = items[0]
            example = path.relative_to(folder).as_posix() + (f": {why}" if why else "")
            name = kind.replace("subfolder", "subfolders") if len(items) > 1 else kind
            parts.append(f"{len(items)} {name} (e.g. {example})")
    return (f"{folder}: skipped {len(skipped)} entr{'ies' if len(skipped) > 1 else 'y'} in class folders: "
            f"{', '.join(parts)}")


def _scan(folder: Path, classes: list[str] | None) -> tuple[list[Path], list[int], list[str]]:
    """(files, labels, classes) of one split folder; `classes` fixes the label order (from train/).

    Files Pillow cannot read (other formats, unreadable headers) and subfolders of class folders
    are skipped and reported in one warning; hidden files (.DS_Store, ._x.jpg) are ignored.
    """
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder: expected {folder.name}/ with one subfolder per class")
    found = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise UserError(f"{folder} has no class subfolders: expected {folder.name}/<class>/<image>.png|jpg|...")
    if classes is None:
        if len(found) < 2:
            raise UserError(f"{folder} has one class folder ({found[0]}/): a classifier needs at least two "
                            f"classes, one subfolder of images per class")
        classes = found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise UserError(f"{folder} has classes {', '.join(unknown)} that train/ lacks: expected a subset of train/'s classes")
    extensions = image_extensions()
    files, labels, skipped = [], [], []  # skipped: (path, kind, why)
    for label, name in enumerate(classes):
        class_dir = folder / name
        if not class_dir.is_dir():
            continue  # a test folder may lack a class
        images, skipped_here = [], []
        for path in sorted(p for p in class_dir.iterdir() if not p.name.startswith(".")):
            if path.is_dir():
                skipped_here.append((path, SKIPPED_KINDS[2], ""))
            elif path.suffix.lower() not in extensions:
                skipped_here.append((path, SKIPPED_KINDS[0], ""))
            elif (why := unreadable_reason(path)) is not None:
                skipped_here.append((path, SKIPPED_KINDS[1], why))
            else:
                images.append(path)
        if not images:
            held = f"; {_skipped_line(folder, skipped_here)}" if skipped_here else ""
            raise UserError(f"class folder {class_dir} has no images: expected files Pillow reads "
                            f"(.png, .jpg, .gif, .bmp, .webp, .tif, ...){held}")
        files += images
        labels += [label] * len(images)
        skipped += skipped_here
    if skipped:
        warnings.warn(_skipped_line(folder, skipped), stacklevel=2)
    return files, labels, classes


def decode(path: Path, image_size: int | None) -> torch.Tensor:
    """One image as a uint8 RGB tensor (3, H, W), resized and centre-cropped if image_size is set."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            image = to_8bit(image)
            if image.mode == "P":
                image = image.convert("RGBA")  # palette transparency, then dropped like RGBA's
            image = image.convert("RGB")
    except Exception as error:  # PIL raises many types for a truncated or foreign file
        raise UserError(f"cannot read image {path} ({pillow_reason(error, path)}): expected an image file "
                        f"Pillow reads") from None
    if image_size is not None:
        width, height = image.size
        scale = image_size / min(width, height)
        new_size = (max(image_size, round(width * scale)), max(image_size, round(height * scale)))
        image = image.resize(new_size, Image.BILINEAR)
        left, top = (new_size[0] - image_size) // 2, (new_size[1] - image_size) // 2
        image = image.crop((left, top, left + image_size, top + image_size))
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return pixels.view(image.size[1], image.size[0], 3).permute(2, 0, 1).contiguous()  # (3, H, W)


def _header_size(path: Path) -> tuple[int, int]:
    """(width, height) without decoding the pixels."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except Exception as error:
        raise UserError(f"cannot read image {path} ({pillow_reason(error, path)}): expected an image file "
                        f"Pillow reads") from None


class StreamingFolder(torch.utils.data.Dataset):
    """A split of an image folder decoded on demand: for trees too large for memory.

    Like `Dataset` but without `.images`: `.files`, `.labels` (int64), `.classes`, `.name`,
    `.default_flip`; `ds[i]` -> (uint8 image (3, S, S), label). `Loader` streams it through
    DataLoader workers.
    """

    def __init__(self, files, labels, classes, name, image_size, split):
        self.files = list(files)
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.classes = classes
        self.name = name
        self.image_size = image_size
        self.split = split
        self.default_flip = True
        self.default_pad = Dataset.default_pad

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        return decode(self.files[index], self.image_size), self.labels[index]

    def subset(self, indices: torch.Tensor, split: str) -> "StreamingFolder":
        chosen = indices.tolist()
        return StreamingFolder([self.files[i] for i in chosen], self.labels[indices], self.classes,
                               self.name, self.image_size, split)

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """Up to n images (uint8, (n, 3, S, S)) drawn with a fixed seed: to fit a Normalizer."""
        chosen = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        return torch.stack([decode(self.files[i], self.image_size) for i in chosen.sort().values.tolist()])


def worker_error(error: Exception) -> UserError:
    """The one-line UserError inside a DataLoader worker's wrapped traceback."""
    lines = [line for line in str(error).splitlines() if line.startswith("resnets.errors.UserError: ")]
    return UserError(lines[-1].split(": ", 1)[1] if lines else str(error).splitlines()[0])


def _images_only(items: list) -> list[torch.Tensor]:
    return [image for image, _ in items]  # a module-level function: picklable for spawned workers


def _decode_all(stream: StreamingFolder) -> torch.Tensor:
    """All images of `stream` stacked (N, 3, H, W); images of mixed sizes are an error."""
    workers = min(4, os.cpu_count() or 1) if len(stream) > DECODE_WORKERS_ABOVE else 0
    loader = torch.utils.data.DataLoader(stream, batch_size=64, num_workers=workers,
                                         collate_fn=_images_only)
    images, first = [], None
    try:
        for batch in loader:
            for image in batch:
                if first is None:
                    first = image.shape
                elif image.shape != first:
                    path = stream.files[len(images)]
                    raise UserError(f"image {path} is {image.shape[2]}x{image.shape[1]} but {stream.files[0]} is "
                                    f"{first[2]}x{first[1]}: images of mixed sizes need --image-size")
                images.append(image)
    except UserError as error:
        raise worker_error(error) if workers else error from None
    return torch.stack(images)


def cache_key(files: list[Path], root: Path, image_size: int | None) -> str:
    """A hash of the split's contents: relative paths, sizes, mtimes, and the image size."""
    digest = hashlib.sha256(f"v{CACHE_VERSION} size={image_size}\n".encode())
    for path in files:
        stat = path.stat()
        digest.update(f"{path.relative_to(root).as_posix()}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def _load_cached(stream: StreamingFolder, root: Path, part: str) -> torch.Tensor:
    """The decoded images of one split folder, from the cache when its key matches."""
    key = cache_key(stream.files, root, stream.image_size)
    cache_dir = root / CACHE_DIR
    prefix = f"{part}-{stream.image_size or 'native'}-"
    path = cache_dir / f"{prefix}{key}.pt"
    if path.is_file():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
            images = cached["images"]
            if cached.get("key") == key and images.dtype == torch.uint8 and images.shape[0] == len(stream):
                return images
        except Exception:  # a damaged cache is rebuilt, never trusted
            pass
    images = _decode_all(stream)
    try:
        cache_dir.mkdir(exist_ok=True)
        for stale in cache_dir.glob(f"{prefix}*.pt"):
            stale.unlink(missing_ok=True)
        _save_atomic({"key": key, "images": images, "labels": stream.labels, "classes": stream.classes}, path)
    except OSError as error:
        warnings.warn(f"cannot write the image cache in {cache_dir} ({error}); images will be decoded again next run")
    return images


def _save_atomic(value: dict, path: Path) -> None:
    """torch.save to a temporary file beside `path`, then rename: never a half-written cache."""
    with atomic_open(path, "wb") as file:
        torch.save(value, file)


def _memory_limit() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def load_folder(path: str, split: str, seed: int = 0, val_fraction: float | None = None,
                image_size: int | None = None, max_memory_bytes: int | None = None):
    """One split of an ImageFolder tree: a Dataset, or a StreamingFolder when too large."""
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise UserError(f"image_size {image_size!r} is invalid: expected a positive integer")
    root = Path(path).expanduser()
    if not path or not root.is_dir():
        raise UserError(f"image folder {root} does not exist: expected a folder with train/ and val/")
    train_files, train_labels, classes = _scan(root / "train", None)
    part = "val" if split == "test" else "train"
    if split == "test":
        files, labels, _ = _scan(root / "val", classes)
    else:
        files, labels = train_files, train_labels
    name = f"folder:{path}"
    stream = StreamingFolder(files, labels, classes, name, image_size, "test" if split == "test" else "trainval")

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
        whole = stream
    else:
        images = _load_cached(stream, root, part)
        whole = Dataset(images, stream.labels, classes, name, default_flip=True, split=stream.split)
    if split == "test":
        return whole
    return select(whole, split, seed, val_size(len(whole), resolve_val_fraction(val_fraction)))
