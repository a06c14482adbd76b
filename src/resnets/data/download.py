"""Fetch the CIFAR archives: official URL, MD5 check, atomic write, then extraction.

The destination folder is checked to be writable before anything is fetched. The archive is
written through `atomic_open` (a temporary file beside its final path) and renamed only after
its MD5 matches, so a failure (a dropped connection, a wrong checksum, a full disk, Ctrl-C)
leaves nothing behind, and a retry removes what a killed process left. Extraction goes to a temporary folder that is renamed into place once
complete.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from resnets.atomic import atomic_open, remove_stale_temporaries, writable_folder
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
    remove_stale_temporaries(path)  # a killed run's partial archive
    try:
        response = urllib.request.urlopen(url, timeout=TIMEOUT_S)
    except ValueError as error:
        raise UserError(f"cannot download {url!r} ({error}): expected an http:// or https:// URL") from None
    except urllib.error.HTTPError as error:
        raise _failed(url, 0, error) from None
    except (OSError, http.client.HTTPException) as error:  # no network, no server, refused
        reason = getattr(error, "reason", None) or error
        raise UserError(f"cannot reach {url} ({reason}): check the URL and the network; "
                        f"without network, fetch the archive on another machine and put it at "
                        f"{path} (its MD5 is checked)") from None
    digest, received = hashlib.md5(), 0
    try:
        with response, atomic_open(path, "wb") as out:  # network errors are UserErrors by now (_read)
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            while chunk := _read(response, url, received):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
            if expected is not None and received != expected:
                raise UserError(f"download of {url} stopped after {received:,} of {expected:,} bytes: try again")
            if digest.hexdigest() != md5:
                raise UserError(f"{url} has MD5 {digest.hexdigest()}, expected {md5}: the file is corrupt or not "
                                f"the official archive")
    except OSError as error:  # writing the archive here: a full disk, a read-only folder
        raise UserError(f"cannot write {path} ({error.strerror or error}): expected a writable folder "
                        f"with room for the archive") from None
    return path


def _read(response, url: str, received: int) -> bytes:
    """The next chunk of the response; a network failure becomes a UserError."""
    try:
        return response.read(CHUNK)
    except (OSError, ValueError, http.client.HTTPException) as error:  # a reset, a timeout, IncompleteRead
        raise _failed(url, received, error) from None


def _failed(url: str, received: int, error: Exception) -> UserError:
    if isinstance(error, urllib.error.HTTPError):
        reason = f"HTTP {error.code} {error.reason}"
    else:
        reason = getattr(error, "reason", None) or error
    return UserError(f"download of {url} failed after {received:,} bytes ({reason}): try again")


def extract(archive: Path, folder_name: str) -> Path:
    """Extract `archive` beside itself; the folder `folder_name` appears only when complete."""
    target = archive.parent / folder_name
    if target.is_dir():
        return target
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{folder_name}.", dir=archive.parent))
    except OSError as error:
        raise UserError(f"cannot extract {archive} into {archive.parent} ({error.strerror or error})") from None
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
        if isinstance(error, OSError) and error.errno is not None:  # writing: a full disk, permissions
            raise UserError(f"cannot extract {archive} into {archive.parent} ({error.strerror or error})") from None
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
    folder = writable_folder(Path(to).expanduser())  # before any byte is fetched
    url = url or info["url"]
    archive = fetch(url, folder / info["url"].rsplit("/", 1)[-1], md5 or info["md5"])
    return extract(archive, info["folder"])
