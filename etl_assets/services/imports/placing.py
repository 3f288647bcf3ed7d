"""Placing a file in the inbox atomically: copied under a hidden `.part` name, fsync'ed, then
renamed to the first free name, so the upload sensor only ever sees complete files."""

import contextlib
import datetime as dt
import itertools
import os
import shutil
import uuid
from pathlib import Path
from typing import BinaryIO

from etl_assets.contract import company_problem, upload_suffix


class UploadError(Exception):
    """The file cannot be placed in the inbox."""


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
    directory = inbox / company
    # Not named after the file: a name near the 255-byte limit would leave no room.
    partial = directory / f".{uuid.uuid4().hex}.part"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst, 1024 * 1024)
            dst.flush()
            os.fsync(dst.fileno())
        return _publish(partial, directory, name)
    except OSError as exc:
        raise UploadError(f"cannot place {name} in {directory}: {exc.strerror}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            partial.unlink()


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
