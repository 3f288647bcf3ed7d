"""Placing a file in the inbox atomically: copied under a hidden `.part` name, fsync'ed, then
renamed to the first free name, so the upload sensor only ever sees complete files."""

import contextlib
import datetime as dt
import hashlib
import itertools
import os
import unicodedata
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Self

from etl_assets.contract import company_problem, upload_suffix

COPY_BLOCK = 1024 * 1024
# A received name leaves room for the `-<UTC stamp>-<n>` that `_publish` adds when the name is
# taken, within the 255-byte limit of a file name.
MAX_NAME_BYTES = 200


class UploadError(Exception):
    """The file cannot be placed in the inbox."""


class BadFileName(UploadError):
    """A received file name that cannot be a file of the inbox."""


class UnsupportedFileType(BadFileName):
    """A received file name without an accepted suffix."""


class UploadTooLarge(UploadError):
    """More bytes arrived than the upload limit allows."""


@dataclass(frozen=True)
class Placed:
    """A complete upload, published in the inbox."""

    path: Path
    size_bytes: int
    sha256: str


def place_upload(source: Path, company: str, inbox: Path) -> Path:
    """Copy `source` to `<inbox>/<company>/` under a hidden temporary name, then rename it.

    The sensor ignores hidden and `.part` names, so it only ever sees the complete file.
    """
    problem = company_problem(company)
    if problem:
        raise UploadError(problem)
    if upload_suffix(source.name) is None:
        raise UploadError(f"{source}: unsupported file type (use .csv, .csv.gz or .xlsx)")
    if not source.exists():
        raise UploadError(f"{source}: no such file")
    if not source.is_file():
        raise UploadError(f"{source}: not a regular file")
    try:
        src = open(source, "rb")  # noqa: SIM115
    except OSError as exc:
        raise UploadError(f"{source}: cannot read: {exc.strerror}") from exc
    with src:
        return place_stream(src, source.name, company, inbox)


def place_stream(src: BinaryIO, name: str, company: str, inbox: Path) -> Path:
    """Copy the open file `src` to `<inbox>/<company>/` as `name`, the way `place_upload` does.

    For a caller that opened and checked the file itself (the pull copies the descriptor it
    checked); `company` must be a valid slug and `name` a plain file name.
    """
    writer = InboxWriter(inbox, company, name)
    try:
        with writer:
            while chunk := src.read(COPY_BLOCK):
                writer.write(chunk)
            return writer.finish().path
    except OSError as exc:
        raise UploadError(f"cannot place {name} in {writer.directory}: {exc.strerror}") from exc


def upload_name(received: str) -> str:
    """The inbox name of a file that arrived named `received` (by a client, not a local path).

    Only its last part counts (clients may send a path, with either separator). Raises
    `UnsupportedFileType` without an accepted suffix, `BadFileName` for a name that is empty,
    hidden, holds control characters or is too long.
    """
    name = received.replace("\\", "/").rsplit("/", 1)[-1]
    if not name:
        raise BadFileName("the file name is empty")
    if any(unicodedata.category(char) == "Cc" for char in name):
        raise BadFileName(f"file name {name!r} holds control characters")
    if name.startswith("."):
        raise BadFileName(f"file name {name!r} starts with a dot (hidden files are never read)")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise BadFileName(f"file name {name!r} is not valid Unicode") from exc
    if size > MAX_NAME_BYTES:
        raise BadFileName(f"file name of {size} bytes: at most {MAX_NAME_BYTES} are accepted")
    if upload_suffix(name) is None:
        raise UnsupportedFileType(
            f"file name {name!r}: unsupported file type (use .csv, .csv.gz or .xlsx)"
        )
    return name


class InboxWriter:
    """An upload arriving in pieces: written to a hidden `.part` file in `<inbox>/<company>/`
    while hashed (sha256) and counted, then published under its name by `finish`.

    `company` must be a valid slug and `name` a plain file name (see `upload_name`). Used as a
    context manager (or with `open` and `discard`), the part file is removed whatever happens
    unless `finish` published it: an error, a limit, a client that went away. The methods raise
    `OSError` as the file system does; only `write` raises `UploadTooLarge`, once past
    `max_bytes`, after removing the part file.
    """

    def __init__(self, inbox: Path, company: str, name: str, max_bytes: int | None = None) -> None:
        self.directory = inbox / company
        self.name = name
        self.max_bytes = max_bytes
        self.size_bytes = 0
        self._digest = hashlib.sha256()
        # Not named after the file: a name near the 255-byte limit would leave no room.
        self._partial = self.directory / f".{uuid.uuid4().hex}.part"
        self._file: BinaryIO | None = None

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *_exc_info: object) -> None:
        self.discard()

    @property
    def sha256(self) -> str:
        """The hex sha256 of the bytes written so far."""
        return self._digest.hexdigest()

    @property
    def inode(self) -> int:
        """The part file's inode: the published file keeps it (a rename)."""
        return os.fstat(self._opened().fileno()).st_ino

    def open(self) -> None:
        """Create the part file (and the company directory)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._file = open(self._partial, "xb")  # noqa: SIM115

    def write(self, chunk: bytes) -> None:
        """Append `chunk`."""
        file = self._opened()
        if self.max_bytes is not None and self.size_bytes + len(chunk) > self.max_bytes:
            self.discard()
            raise UploadTooLarge(f"{self.name}: over the upload limit of {self.max_bytes} bytes")
        self._digest.update(chunk)
        file.write(chunk)
        self.size_bytes += len(chunk)

    def finish(self) -> Placed:
        """Make the bytes durable, then publish them under the first free name of `name`."""
        file = self._opened()
        file.flush()
        os.fsync(file.fileno())
        file.close()
        target = _publish(self._partial, self.directory, self.name)
        return Placed(path=target, size_bytes=self.size_bytes, sha256=self.sha256)

    def discard(self) -> None:
        """Close and remove the part file; nothing to do once published or discarded."""
        if self._file is not None:
            self._file.close()
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            self._partial.unlink()

    def _opened(self) -> BinaryIO:
        if self._file is None or self._file.closed:
            raise ValueError(f"the part file of {self.name} is not open")
        return self._file


def _publish(partial: Path, directory: Path, name: str) -> Path:
    """Rename the complete file to the first of its names that is free.

    A rename, not a second link, so the sensor never sees the file with two names (it rejects
    hard links). A file already waiting under the name is never replaced; the check and the
    rename are two steps, so only two uploaders of one name in the same instant could collide
    (Python has no rename that refuses to replace).
    """
    suffix = upload_suffix(name) or ""
    stem = name[: len(name) - len(suffix)]
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    names = itertools.chain(
        [name, f"{stem}-{stamp}{suffix}"],
        (f"{stem}-{stamp}-{n}{suffix}" for n in itertools.count(2)),
    )
    target = next(directory / n for n in names if not os.path.lexists(directory / n))
    os.rename(partial, target)
    return target
