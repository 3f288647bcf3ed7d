"""The import journal: one `uploads` row per file the sensor saw, and what became of it."""

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Literal

from sqlalchemy import Connection, Engine, and_, func, or_, select

from etl_assets.services.scrubbing import scrub
from etl_assets.warehouse.dialect import insert_unless_present
from etl_assets.warehouse.schema import uploads

Status = Literal["received", "processing", "completed", "rejected", "failed", "duplicate"]
UNFINISHED: tuple[Status, ...] = ("received", "processing")
# Terminal outcomes of an import; a retry of the same step skips uploads it already ended so.
DONE: tuple[Status, ...] = ("completed", "rejected")
# A company's uploads are imported in the order they were dropped: file mtime, then name.
DROP_ORDER = (
    func.coalesce(uploads.c.dropped_at, uploads.c.received_at),
    uploads.c.original_name,
    uploads.c.upload_id,
)


@dataclass(frozen=True)
class UploadRecord:
    """A journal row."""

    upload_id: str
    company: str | None
    original_name: str
    sha256: str | None
    kind: str | None
    source: str | None
    status: Status
    received_at: dt.datetime
    dropped_at: dt.datetime | None = None
    size_bytes: int | None = None
    attempts: int = 0
    rows_read: int | None = None
    rows_imported: int | None = None
    rows_updated: int | None = None
    rows_rejected: int | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    run_id: str | None = None
    message: str | None = None
    # JSON list of the ISO days whose aggregates the import changed (sales only).
    days_touched: str | None = None


@dataclass(frozen=True)
class Outcome:
    """The end of an import attempt, as the journal records it."""

    status: Status
    rows_read: int
    rows_imported: int
    rows_updated: int
    rows_rejected: int
    message: str
    started_at: dt.datetime
    days_touched: list[str] = field(default_factory=list)


def now_utc() -> dt.datetime:
    """The journal's clock."""
    return dt.datetime.now(dt.UTC)


def record(conn: Connection, entry: UploadRecord) -> bool:
    """Insert a journal row unless one with that id exists; True when inserted."""
    return insert_unless_present(conn, uploads, dict(entry.__dict__))


def get(conn: Connection, upload_id: str) -> UploadRecord | None:
    """The journal row of an upload, if any."""
    row = conn.execute(select(uploads).where(uploads.c.upload_id == upload_id)).mappings().first()
    return UploadRecord(**row) if row else None


def get_many(conn: Connection, upload_ids: list[str]) -> dict[str, UploadRecord]:
    """The journal rows of these uploads that exist, by id."""
    rows = conn.execute(select(uploads).where(uploads.c.upload_id.in_(upload_ids))).mappings()
    return {row["upload_id"]: UploadRecord(**row) for row in rows}


def unfinished(conn: Connection, limit: int) -> list[UploadRecord]:
    """Uploads not imported yet (`received`) or whose import has not ended (`processing`).

    Ordered by company, then drop order, and at most `limit` of them.
    """
    rows = conn.execute(
        select(uploads)
        .where(uploads.c.status.in_(UNFINISHED))
        .order_by(uploads.c.company, *DROP_ORDER)
        .limit(limit)
    ).mappings()
    return [UploadRecord(**row) for row in rows]


def drop_key(record: UploadRecord) -> tuple[dt.datetime, str, str]:
    """`DROP_ORDER` for records in memory."""
    return (record.dropped_at or record.received_at, record.original_name, record.upload_id)


def count_duplicates(conn: Connection, original: UploadRecord) -> int:
    """How many byte-identical re-drops of an upload were journalled."""
    query = select(func.count()).where(
        uploads.c.status == "duplicate",
        uploads.c.company == original.company,
        uploads.c.sha256 == original.sha256,
    )
    return int(conn.execute(query).scalar_one())


def mark_offered(conn: Connection, upload_id: str, message: str) -> None:
    """The upload sensor handed the upload to an import run: one more attempt."""
    conn.execute(
        uploads.update()
        .where(uploads.c.upload_id == upload_id)
        .values(status="received", attempts=uploads.c.attempts + 1, message=_bounded(message))
    )


def note_held(conn: Connection, company: str, message: str) -> int:
    """Say on the company's waiting uploads why they wait; rows already saying it are left."""
    bounded = _bounded(message)
    return conn.execute(
        uploads.update()
        .where(
            uploads.c.company == company,
            uploads.c.status == "received",
            or_(uploads.c.message.is_(None), uploads.c.message != bounded),
        )
        .values(message=bounded)
    ).rowcount


def _bounded(message: str) -> str:
    """A failure message fit for the journal: secrets masked, then cut (cutting first could
    leave a password whose URL no longer looks like one)."""
    return scrub(message)[:2000]


def mark_interrupted(engine: Engine, upload_id: str, run_id: str | None, message: str) -> None:
    """An import was stopped from outside (run terminated): the upload, and the run's other
    uploads still `processing`, go back to `received` for the sensor to offer again."""
    interrupted = uploads.c.upload_id == upload_id
    if run_id is not None:
        interrupted = or_(
            interrupted, and_(uploads.c.run_id == run_id, uploads.c.status == "processing")
        )
    with engine.begin() as conn:
        conn.execute(
            uploads.update()
            .where(interrupted)
            .values(status="received", message=_bounded(message), finished_at=None)
        )


def give_up(conn: Connection, upload_id: str, message: str) -> None:
    """No import run finished the upload in its attempts: `failed`, with why and what to do."""
    conn.execute(
        uploads.update()
        .where(uploads.c.upload_id == upload_id, uploads.c.status.in_(UNFINISHED))
        .values(status="failed", message=_bounded(message), finished_at=now_utc())
    )


def finish(conn: Connection, upload_id: str, outcome: Outcome) -> None:
    """Record how an import attempt ended; `LookupError` for an upload not in the journal
    (raised inside the import's transaction, so nothing it wrote stays)."""
    updated = conn.execute(
        uploads.update()
        .where(uploads.c.upload_id == upload_id)
        .values(
            status=outcome.status,
            rows_read=outcome.rows_read,
            rows_imported=outcome.rows_imported,
            rows_updated=outcome.rows_updated,
            rows_rejected=outcome.rows_rejected,
            message=outcome.message,
            days_touched=json.dumps(outcome.days_touched) if outcome.days_touched else None,
            started_at=outcome.started_at,
            finished_at=now_utc(),
        )
    ).rowcount
    if updated != 1:
        raise LookupError(f"upload {upload_id!r} is not in the journal")


def mark_failed(engine: Engine, upload_id: str, message: str) -> None:
    """An import attempt crashed; the message says why (the run log has the traceback)."""
    with engine.begin() as conn:
        conn.execute(
            uploads.update()
            .where(uploads.c.upload_id == upload_id)
            .values(status="failed", message=_bounded(message), finished_at=now_utc())
        )
