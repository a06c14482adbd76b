"""Fetch the CIFAR archives: official URL, MD5 check, atomic write, then extraction.

The archive is written to `<name>.part` beside its final path and renamed only after its MD5
matches, so a failure (a dropped connection, a wrong checksum, Ctrl-C) leaves nothing behind,
and a retry starts from a clean slate (a stale `.part` from a killed process is removed first).
Extraction goes to a temporary folder that is renamed into place once complete.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from resnets.errors import UserError

ARCHIVES = {
    "cifar10": {
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "md5": "c58f30108f718f92721af3b95e74349a",
        "folder": "cifar-10-batches-py",
    },
    "cifar100": {
        "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "md5": "eb9058c3a382ffc7106e4002c42a8d85",
        "folder": "cifar-100-python",
    },
}
CHUNK = 1 << 20
TIMEOUT_S = 60


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(url: str, path: str | Path, md5: str) -> Path:
    """Download `url` to `path` if `path` is not already there with this MD5; return `path`."""
    path = Path(path)
    if path.is_file() and md5_of(path) == md5:
        return path
    part = path.with_name(path.name + ".part")
    part.unlink(missing_ok=True)  # a retry starts clean
    digest, received, expected = hashlib.md5(), 0, None
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(part, "wb") as out:
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            while chunk := response.read(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
        if expected is not None and received != expected:
            raise UserError(f"download of {url} stopped after {received:,} of {expected:,} bytes: try again")
        if digest.hexdigest() != md5:
            raise UserError(f"{url} has MD5 {digest.hexdigest()}, expected {md5}: the file is corrupt or not the official archive")
        os.replace(part, path)
    except UserError:
        part.unlink(missing_ok=True)
        raise
    except (urllib.error.URLError, OSError, ValueError) as error:  # includes http.client.IncompleteRead
        part.unlink(missing_ok=True)
        if isinstance(error, urllib.error.HTTPError):
            reason = f"HTTP {error.code} {error.reason}"
        else:
            reason = getattr(error, "reason", None) or error
        raise UserError(f"download of {url} failed after {received:,} bytes ({reason}): try again") from None
    except BaseException:  # Ctrl-C: still leave nothing half-written
        part.unlink(missing_ok=True)
        raise
    return path


def extract(archive: Path, folder_name: str) -> Path:
    """Extract `archive` beside itself; the folder `folder_name` appears only when complete."""
    target = archive.parent / folder_name
    if target.is_dir():
        return target
    staging = Path(tempfile.mkdtemp(prefix=f".{folder_name}.", dir=archive.parent))
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar.getmembers():
                name = Path(member.name)
                if name.is_absolute() or ".." in name.parts or not (member.isfile() or member.isdir()):
                    raise UserError(f"{archive} holds an unsafe entry {member.name!r}: expected plain files in {folder_name}/")
            tar.extractall(staging, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(staging)
        extracted = staging / folder_name
        if not extracted.is_dir():
            raise UserError(f"{archive} has no {folder_name}/ folder: expected the official archive")
        os.replace(extracted, target)
    except (tarfile.TarError, EOFError, OSError) as error:
        raise UserError(f"cannot extract {archive} ({error}): delete it and download it again") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def download(name: str, to: str | Path, url: str | None = None, md5: str | None = None) -> Path:
    """Fetch and extract a CIFAR archive into `to`; return the extracted folder.

    name: "cifar10" or "cifar100". url: a mirror of the official archive (same MD5).
    md5: override the expected checksum (only for a file that is not the official archive).
    Both steps are skipped when already done, so running it twice costs one MD5 check.
    """
    if name not in ARCHIVES:
        raise UserError(f"cannot download {name!r}: expected one of {', '.join(ARCHIVES)}")
    info = ARCHIVES[name]
    folder = Path(to).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create {folder} ({error.strerror}): expected a writable folder") from None
    url = url or info["url"]
    archive = fetch(url, folder / info["url"].rsplit("/", 1)[-1], md5 or info["md5"])
    return extract(archive, info["folder"])
