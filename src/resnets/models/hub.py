"""torch.hub's cache of published weights: the download, and the check of what is found there.

torchvision's releases are fetched once through `torch.hub.download_url_to_file(...,
hash_prefix=)` into torch's hub cache (`$TORCH_HOME/hub/checkpoints`, by default
`~/.cache/torch/hub/checkpoints`), where a file torchvision already downloaded is found and
reused. torch.hub checks the SHA-256 in the file name on download only; a file found in the
cache (copied there by hand, or replaced since) is checked here against that hash once: the
verification is remembered in `$TORCH_HOME/hub/resnets-verified-weights.json`, keyed by the
file's name, size and modification time, so a file costs one read however often it is used,
and a file changed since is read again. A mismatch is one line naming the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import json
import pickle
import socket
import sys
import time
import urllib.error
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from resnets.errors import UserError

if TYPE_CHECKING:
    from resnets.models.weights import Release

STALE_PARTIAL_S = 600  # a torch.hub temporary file untouched this long belongs to a killed download
TIMEOUT_S = 60  # a connection that answers nothing this long counts as no network
VERIFIED = "resnets-verified-weights.json"  # in torch's hub folder, beside checkpoints/


# ------------------------------------------------------------------ the download and cache
def cache_folder() -> Path:
    """Where torch.hub keeps downloaded weights (and where torchvision's downloads are)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def cached_file(entry: Release) -> Path:
    return cache_folder() / entry.file_name


def fetch_state_dict(entry: Release, *, progress: bool | None = None) -> dict[str, torch.Tensor]:
    """The state dict of a release: from the hub cache, else downloaded into it (once) with
    its hash checked; read by `resnets.models.files.read_torch_file`, the one reader of every
    torch file. Every failure is one line: no network (which file to put where), a hash that
    does not match (nothing kept), an unwritable cache, a cached file that cannot be read.
    `progress`: torch.hub's progress bar on stderr (default: when stderr is a terminal);
    without it a download is silent until its one line "downloaded URL to PATH"."""
    from resnets.models.files import read_torch_file

    folder, path = cache_folder(), cached_file(entry)
    if path.is_file():
        verify_cached(path, entry.sha256)
    else:
        from resnets.atomic import writable_folder

        writable_folder(folder)  # before any byte is fetched
        _remove_stale_partials(path)
        _download(entry, path, sys.stderr.isatty() if progress is None else progress)
    return as_state_dict(read_torch_file(path, "weights"), path)


def _download(entry: Release, path: Path, progress: bool) -> None:
    """Fetch `entry` to `path`: torch.hub writes a temporary file and renames it only once
    its SHA-256 starts with the release's hash, so a failure leaves nothing behind."""
    try:
        # torch.hub says "Downloading: ..." on stdout before it has connected (so a failure
        # would be two lines): dropped, and said below once the file is here; its urlopen
        # takes no timeout
        with contextlib.redirect_stdout(io.StringIO()), _socket_timeout(TIMEOUT_S):
            torch.hub.download_url_to_file(entry.url, str(path), hash_prefix=entry.sha256,
                                           progress=progress)
    except RuntimeError as error:
        if "invalid hash value" not in str(error):
            raise unreadable_weights(path, error) from None
        got = str(error).rsplit('got "', 1)[-1].rstrip('")')
        raise UserError(f"the download of {entry.url} does not match its hash (its SHA-256 starts "
                        f"with {got[:len(entry.sha256)]}, expected {entry.sha256}): it was cut "
                        f"short or altered on the way; nothing was kept in {path.parent}; try "
                        f"again") from None
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError,
            TimeoutError) as error:
        raise _offline(entry, path, error) from None
    except OSError as error:  # writing the download: a full disk, a read-only cache
        raise UserError(f"cannot write {path} ({error.strerror or error}); nothing was "
                        f"kept") from None
    remember_verified(path)  # torch.hub checked its hash: no second read next time
    print(f"downloaded {entry.url} to {path}", file=sys.stderr)


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    """New sockets time out after `seconds` (of silence) inside the block."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _offline(entry: Release, path: Path, error: Exception) -> UserError:
    if isinstance(error, urllib.error.HTTPError):
        reason = f"HTTP {error.code} {error.reason}"
    else:
        reason = getattr(error, "reason", None) or error
    return UserError(f"cannot download {entry.describe()} ({reason}) and they are not in the "
                     f"cache: put the file {entry.file_name} (from {entry.url}) at {path}")


def unreadable_weights(path: Path, error: Exception, downloaded: bool = True) -> UserError:
    """One line for a weights file torch cannot read. Only a file of the hub cache
    (`downloaded`) comes back when deleted; a user's own file is only named."""
    if isinstance(error, pickle.UnpicklingError):
        reason = ("it holds objects other than tensors, and loading those could run code; "
                  "weights files never hold them")
    else:
        reason = (str(error).splitlines() or [type(error).__name__])[0]
    advice = ("delete it and it will be downloaded again" if downloaded else
              "expected a state dict saved by torch.save, or a resnets checkpoint")
    return UserError(f"{path} cannot be read as weights ({reason}); {advice}")


def _verified_record() -> Path:
    return Path(torch.hub.get_dir()) / VERIFIED


def _fingerprint(path: Path) -> list[int]:
    status = path.stat()
    return [status.st_size, status.st_mtime_ns]


def _read_verified() -> dict:
    try:
        record = json.loads(_verified_record().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _key(path: Path) -> str:
    """A file's entry in the record: its name in the hub cache, its whole path elsewhere."""
    path = path.absolute()
    return path.name if path.parent == cache_folder().absolute() else str(path)


def remember_verified(path: Path) -> None:
    """Record that `path` (as it is now: size and modification time) matches its name's hash.
    An unwritable record is no error: the file is then read again next time."""
    from resnets.atomic import write_json

    record = _read_verified()
    record[_key(path)] = _fingerprint(path)
    with contextlib.suppress(OSError):
        write_json(_verified_record(), record)


def verify_cached(path: Path, sha256: str, remedy: str = "delete it and it will be "
                                                        "downloaded again") -> None:
    """Refuse a file whose SHA-256 does not start with `sha256`, the hash in its name (a
    release's file in the hub cache, or one a user passes by path): torch.hub checks only what
    it downloads. Once a file matched, its size and modification time are remembered and it
    is not read again until they change. `remedy`: the refusal's advice."""
    if _read_verified().get(_key(path)) == _fingerprint(path):
        return
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    got = digest.hexdigest()
    if not got.startswith(sha256):
        raise UserError(f"{path} is not the file its name promises: its SHA-256 starts with "
                        f"{got[:len(sha256)]}, the name says {sha256} (replaced or altered "
                        f"since it was downloaded); {remedy}")
    remember_verified(path)


def _remove_stale_partials(path: Path) -> None:
    """Delete torch.hub's temporary files for `path` (`NAME.<hex>.partial`) that a killed
    download left: none has been written to for STALE_PARTIAL_S seconds."""
    now = time.time()
    for partial in path.parent.glob(f"{path.name}.*.partial"):
        with contextlib.suppress(OSError):
            if now - partial.stat().st_mtime > STALE_PARTIAL_S:
                partial.unlink()


def as_state_dict(value: Any, source: str | Path) -> dict[str, torch.Tensor]:
    """`value` as a plain dict of tensors, or a UserError saying what the file holds instead."""
    if not isinstance(value, dict) or not value or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()):
        kind = type(value).__name__
        raise UserError(f"{source}: not a state dict (a dict of parameter names to tensors), "
                        f"but a {kind}")
    return dict(value)


