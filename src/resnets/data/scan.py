"""Listing an image tree without opening a file: the class folders, the image files in each
(by extension alone), what was skipped, and the classes' display names.

A tree of 1.28 million images is listed in seconds: os.scandir, names packed into one bytes
blob (`FileList`) instead of a million Path objects. `resnets.data.folder` reads what is listed.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from resnets.data.images import image_extensions
from resnets.errors import UserError

CLASS_NAME_FILES = ("classes.txt", "synset_words.txt", "LOC_synset_mapping.txt", "words.txt")
SKIPPED_KINDS = ("not in a format Pillow reads", "subfolder (not searched)")


def _pack(names: list[str]) -> tuple[bytes, np.ndarray, np.ndarray]:
    """Names joined in one bytes object (NUL-separated: a file name holds any byte but NUL),
    with the int64 start and end of each."""
    if not names:
        return b"", np.zeros(0, np.int64), np.zeros(0, np.int64)
    blob = os.fsencode("\0".join(names))
    separators = np.flatnonzero(np.frombuffer(blob, dtype=np.uint8) == 0)
    starts = np.concatenate(([0], separators + 1)).astype(np.int64)
    ends = np.concatenate((separators, [len(blob)])).astype(np.int64)
    return blob, starts, ends


class FileList(Sequence):
    """The files of a split, packed: every name in one bytes object with int64 offsets, the
    class folder of each as an int32 index. `files[i]` is a Path.

    1.28 million names take tens of megabytes instead of a Path object each, and DataLoader
    workers forked from the process share them: a Python list of strings would be copied
    into every worker page by page as reference counts change.
    """

    def __init__(self, dirs: list[str], folder: np.ndarray, blob: bytes, starts: np.ndarray,
                 ends: np.ndarray):
        self.dirs = dirs  # class folder paths
        self.folder = folder  # (N,) int32 index into dirs
        self.blob, self.starts, self.ends = blob, starts, ends  # names: blob[starts[i]:ends[i]]

    @classmethod
    def build(cls, dirs: list[str], names: list[list[str]]) -> "FileList":
        """From each folder's file names (names[k] lie in dirs[k])."""
        counts = [len(part) for part in names]
        blob, starts, ends = _pack([name for part in names for name in part])
        folder = np.repeat(np.arange(len(dirs), dtype=np.int32), counts)
        return cls(list(dirs), folder, blob, starts, ends)

    @classmethod
    def from_paths(cls, paths) -> "FileList":
        """From any paths, in their order."""
        paths = [Path(p) for p in paths]
        dirs = sorted({str(p.parent) for p in paths})
        index = {d: k for k, d in enumerate(dirs)}
        blob, starts, ends = _pack([p.name for p in paths])
        folder = np.array([index[str(p.parent)] for p in paths], dtype=np.int32)
        return cls(dirs, folder, blob, starts, ends)

    def __len__(self) -> int:
        return len(self.starts)

    def name(self, index: int) -> str:
        return os.fsdecode(self.blob[int(self.starts[index]):int(self.ends[index])])

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return Path(self.dirs[self.folder[index]], self.name(index))

    def __iter__(self) -> Iterator[Path]:
        return (self[i] for i in range(len(self)))

    def take(self, indices) -> "FileList":
        """The files at `indices` (ints, a tensor or an array), sharing the names."""
        chosen = np.asarray(indices, dtype=np.int64)
        return FileList(self.dirs, self.folder[chosen], self.blob, self.starts[chosen], self.ends[chosen])

    def nbytes(self) -> int:
        """Memory the list holds (names, offsets, folder indices; the folder paths are few)."""
        return len(self.blob) + self.starts.nbytes + self.ends.nbytes + self.folder.nbytes + sum(
            len(d) for d in self.dirs)


def _skipped_line(folder: Path, skipped: list[tuple[Path, str]]) -> str:
    """One line: how many entries were skipped, of each kind (SKIPPED_KINDS), with an example."""
    parts = []
    for kind in SKIPPED_KINDS:
        items = [path for path, what in skipped if what == kind]
        if items:
            example = items[0].relative_to(folder).as_posix()
            name = kind.replace("subfolder", "subfolders") if len(items) > 1 else kind
            parts.append(f"{len(items)} {name} (e.g. {example})")
    return (f"{folder}: skipped {len(skipped)} entr{'ies' if len(skipped) > 1 else 'y'} in class folders: "
            f"{', '.join(parts)}")


def class_folders(folder: Path) -> list[str]:
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())


def no_class_folders(folder: Path) -> UserError:
    extensions = image_extensions()
    with os.scandir(folder) as entries:
        images = sum(1 for e in entries if os.path.splitext(e.name)[1].lower() in extensions)
    if images:
        return UserError(f"{folder} holds {images:,} image files but no class subfolders: expected "
                         f"{folder.name}/<class>/<image>; ImageNet's validation images come in one flat "
                         f"folder and must be sorted into one folder per WordNet id, as in train/ (the "
                         f"class of each image is in the devkit's ground truth or LOC_val_solution.csv)")
    return UserError(f"{folder} has no class subfolders: expected {folder.name}/<class>/<image>.png|jpg|...")


def scan(folder: Path, classes: list[str] | None) -> tuple[FileList, np.ndarray, list[str]]:
    """(files, labels (int64 array), classes) of one split folder; `classes` fixes the label
    order (from train/).

    Decides by name alone (an extension Pillow reads), without opening any file: os.scandir
    gives names and folder flags from the directory itself. Other files and subfolders of
    class folders are skipped and reported in one warning; hidden files (.DS_Store, ._x.jpg)
    are ignored.
    """
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder: expected {folder.name}/ with one subfolder per class")
    found = class_folders(folder)
    if not found:
        raise no_class_folders(folder)
    if classes is None:
        if len(found) < 2:
            raise UserError(f"{folder} has one class folder ({found[0]}/): a classifier needs at least two "
                            f"classes, one subfolder of images per class")
        classes = found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else "")
        raise UserError(f"{folder} has classes {shown} that train/ lacks: expected a subset of train/'s classes")
    extensions = image_extensions()
    dirs, names, labels, skipped = [], [], [], []  # skipped: (path, kind)
    present = set(found)
    for label, name in enumerate(classes):
        if name not in present:
            continue  # a test folder may lack a class
        class_dir = os.path.join(folder, name)
        images, other = [], []
        with os.scandir(class_dir) as entries:
            for entry in entries:
                file_name = entry.name
                if file_name.startswith("."):
                    continue
                dot = file_name.rfind(".")
                if dot > 0 and file_name[dot:].lower() in extensions and not entry.is_dir():
                    images.append(file_name)
                else:
                    other.append(entry)
        skipped_here = [(Path(e.path), SKIPPED_KINDS[1] if e.is_dir() else SKIPPED_KINDS[0])
                        for e in sorted(other, key=lambda e: e.name)]
        if not images:
            held = f"; {_skipped_line(folder, skipped_here)}" if skipped_here else ""
            raise UserError(f"class folder {class_dir} has no images: expected files Pillow reads "
                            f"(.png, .jpg, .gif, .bmp, .webp, .tif, ...){held}")
        images.sort()
        dirs.append(class_dir)
        names.append(images)
        labels.append((label, len(images)))
        skipped += skipped_here
    if skipped:
        warnings.warn(_skipped_line(folder, skipped), stacklevel=2)
    label_array = np.repeat(np.array([label for label, _ in labels], dtype=np.int64), [n for _, n in labels])
    return FileList.build(dirs, names), label_array, classes


def class_names(root: Path, classes: list[str]) -> list[str] | None:
    """Display names of `classes` (folder names) from the first mapping file in `root`
    (CLASS_NAME_FILES); None when there is none. A class the file does not name keeps its
    folder name; a file that names none of them is reported in a warning."""
    for file_name in CLASS_NAME_FILES:
        path = root / file_name
        if path.is_file():
            break
    else:
        return None
    wanted, mapping = set(classes), {}
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            for line in file:
                parts = line.strip().split(None, 1)
                if len(parts) == 2 and parts[0] in wanted:
                    mapping[parts[0]] = parts[1].strip()
    except OSError as error:
        raise UserError(f"cannot read class names from {path} ({error.strerror or error})") from None
    if not mapping:
        warnings.warn(f"{path} names none of train/'s class folders (e.g. {classes[0]}): expected lines "
                      f"'FOLDER NAME', such as 'n01440764 tench, Tinca tinca'; folder names are used", stacklevel=2)
        return None
    return [mapping.get(name, name) for name in classes]
