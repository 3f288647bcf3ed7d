"""What a company may read about its uploads: its journal rows (one, or pages of them), their
rejects files, and the uploads the tenant API placed that the sensor has not journalled yet.

Pages use keyset pagination, newest first, on (received_at, upload_id): the cursor holds the
last row's key, so uploads journalled between two requests never shift or repeat a page.

A placed upload is `pending` until the sensor journals it. The API leaves a marker per placed
upload, `<data>/api/pending/<company>/<upload_id>`, holding the inode of the file it placed (a
rename keeps it): while the company's inbox directory holds that inode, the upload waits for
the sensor. Asking costs one listing of that directory, never hashing, and survives API
restarts. A marker goes when its upload is read once journalled, or, if never read, when the
company places another upload after its file has left the inbox.
"""

import base64
import binascii
import contextlib
import datetime as dt
import json
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

from sqlalchemy import Connection, and_, or_, select

from etl_assets.services.imports import journal
from etl_assets.services.storage import StoragePaths
from etl_assets.warehouse.schema import uploads

STATUSES: tuple[str, ...] = get_args(journal.Status)
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


class QueryError(ValueError):
    """A listing asked with a bad status, limit or cursor."""


@dataclass(frozen=True)
class UploadPage:
    """One page of a company's uploads; `next_cursor` is None on the last."""

    uploads: list[journal.UploadRecord]
    next_cursor: str | None


def get_upload(conn: Connection, company: str, upload_id: str) -> journal.UploadRecord | None:
    """The journal row of one of the company's uploads; None for any other id."""
    record = journal.get(conn, upload_id)
    return record if record is not None and record.company == company else None


def list_uploads(
    conn: Connection,
    company: str,
    *,
    status: str | None = None,
    since: dt.datetime | None = None,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> UploadPage:
    """The company's uploads, newest first: received at `since` or later, of one `status`."""
    if status is not None and status not in STATUSES:
        raise QueryError(f"unknown status {status!r}: use one of {', '.join(STATUSES)}")
    if not 1 <= limit <= MAX_LIMIT:
        raise QueryError(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
    if since is not None and since.tzinfo is None:
        raise QueryError(f"since {since.isoformat()} has no timezone")
    query = select(uploads).where(uploads.c.company == company)
    if status is not None:
        query = query.where(uploads.c.status == status)
    if since is not None:
        query = query.where(uploads.c.received_at >= since)
    if cursor is not None:
        received_at, upload_id = _decode(cursor)
        query = query.where(
            or_(
                uploads.c.received_at < received_at,
                and_(uploads.c.received_at == received_at, uploads.c.upload_id < upload_id),
            )
        )
    rows = conn.execute(
        query.order_by(uploads.c.received_at.desc(), uploads.c.upload_id.desc()).limit(limit + 1)
    ).mappings()
    records = [journal.UploadRecord(**row) for row in rows]
    page = records[:limit]
    more = len(records) > limit
    return UploadPage(uploads=page, next_cursor=_encode(page[-1]) if more else None)


def rejects_file(paths: StoragePaths, record: journal.UploadRecord) -> Path | None:
    """The rejects file of a journalled upload, if its import wrote one."""
    path = paths.rejects_file(record.company or "", record.upload_id)
    return path if path.is_file() else None


def note_placed(paths: StoragePaths, company: str, upload_id: str, inode: int) -> None:
    """Remember that the file with `inode` in the company's inbox is that upload; prune the
    markers of uploads that have left the inbox."""
    directory = _markers(paths, company)
    directory.mkdir(parents=True, exist_ok=True)
    waiting = _inbox_inodes(paths, company)
    for marker in os.scandir(directory):
        if not marker.name.startswith(".") and _marked_inode(Path(marker.path)) not in waiting:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(marker.path)
    # Written aside and renamed, so a reader never sees half a marker.
    partial = directory / f".{uuid.uuid4().hex}.tmp"
    partial.write_text(json.dumps({"inode": inode}), encoding="utf-8")
    os.replace(partial, directory / upload_id)


def forget_placed(paths: StoragePaths, company: str, upload_id: str) -> None:
    """Drop the marker of an upload (journalled, or never published)."""
    if _is_upload_id(company, upload_id):
        with contextlib.suppress(FileNotFoundError):
            (_markers(paths, company) / upload_id).unlink()


def is_pending(paths: StoragePaths, company: str, upload_id: str) -> bool:
    """Whether the API placed that upload and its file still waits in the company's inbox."""
    if not _is_upload_id(company, upload_id):
        return False
    inode = _marked_inode(_markers(paths, company) / upload_id)
    return inode is not None and inode in _inbox_inodes(paths, company)


def _markers(paths: StoragePaths, company: str) -> Path:
    return paths.data_dir / "api" / "pending" / company


def _is_upload_id(company: str, upload_id: str) -> bool:
    """Marker names are upload ids of the company, nothing a path could be made of."""
    return re.fullmatch(rf"{re.escape(company)}\.[0-9a-f]{{16}}", upload_id) is not None


def _marked_inode(marker: Path) -> int | None:
    try:
        return int(json.loads(marker.read_text(encoding="utf-8"))["inode"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _inbox_inodes(paths: StoragePaths, company: str) -> set[int]:
    """The inodes of the entries in the company's inbox directory.

    From `lstat`, not from the directory listing: on overlay file systems the inode a listing
    gives may differ from the one `fstat` gave the writer.
    """
    found: set[int] = set()
    try:
        with os.scandir(paths.inbox / company) as entries:
            for entry in entries:
                with contextlib.suppress(FileNotFoundError):
                    found.add(entry.stat(follow_symlinks=False).st_ino)
    except (FileNotFoundError, NotADirectoryError):
        pass
    return found


def _encode(record: journal.UploadRecord) -> str:
    key = json.dumps([record.received_at.isoformat(), record.upload_id])
    return base64.urlsafe_b64encode(key.encode("utf-8")).decode("ascii").rstrip("=")


def _decode(cursor: str) -> tuple[dt.datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        received_at, upload_id = json.loads(raw)
        instant = dt.datetime.fromisoformat(received_at)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise QueryError(f"invalid cursor {cursor!r}: pass next_cursor as it was given") from exc
    if instant.tzinfo is None or not isinstance(upload_id, str):
        raise QueryError(f"invalid cursor {cursor!r}: pass next_cursor as it was given")
    return instant, upload_id
