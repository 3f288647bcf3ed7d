"""The import journal: one `uploads` row per file the sensor saw, and what became of it."""

import datetime as dt
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.dialects import postgresql, sqlite

from etl_assets.warehouse.schema import uploads

Status = Literal["received", "processing", "completed", "rejected", "failed", "duplicate"]


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
    rows_read: int | None = None
    rows_imported: int | None = None
    rows_updated: int | None = None
    rows_rejected: int | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    run_id: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class Outcome:
    """The end of an import attempt, as the journal records it."""

    status: Status
    rows_read: int
    rows_imported: int
    rows_updated: int
    rows_rejected: int
    message: str


def now_utc() -> dt.datetime:
    """The journal's clock."""
    return dt.datetime.now(dt.UTC)


def record(conn: Connection, entry: UploadRecord) -> bool:
    """Insert a journal row unless one with that id exists; True when inserted."""
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    values = {k: v for k, v in entry.__dict__.items()}
    statement = insert(uploads).values(**values).on_conflict_do_nothing()
    # psycopg 3 reports rowcount -1 for INSERT unless SQLAlchemy is asked to keep it.
    result = conn.execute(statement.execution_options(preserve_rowcount=True))
    return result.rowcount == 1


def get(conn: Connection, upload_id: str) -> UploadRecord | None:
    """The journal row of an upload, if any."""
    row = conn.execute(select(uploads).where(uploads.c.upload_id == upload_id)).mappings().first()
    return UploadRecord(**row) if row else None


def with_status(conn: Connection, status: Status, limit: int) -> list[UploadRecord]:
    """Oldest journal rows in a status, at most `limit`."""
    rows = conn.execute(
        select(uploads)
        .where(uploads.c.status == status)
        .order_by(uploads.c.received_at)
        .limit(limit)
    ).mappings()
    return [UploadRecord(**row) for row in rows]


def count_duplicates(conn: Connection, original: UploadRecord) -> int:
    """How many byte-identical re-drops of an upload were journalled."""
    query = select(func.count()).where(
        uploads.c.status == "duplicate",
        uploads.c.company == original.company,
        uploads.c.sha256 == original.sha256,
    )
    return int(conn.execute(query).scalar_one())


def mark_processing(engine: Engine, upload_id: str, run_id: str | None) -> None:
    """An import attempt starts (each retry starts again)."""
    with engine.begin() as conn:
        updated = conn.execute(
            uploads.update()
            .where(uploads.c.upload_id == upload_id)
            .values(status="processing", started_at=now_utc(), finished_at=None, run_id=run_id)
        ).rowcount
    if updated != 1:
        raise LookupError(f"upload {upload_id!r} is not in the journal")


def finish(conn: Connection, upload_id: str, outcome: Outcome) -> None:
    """Record how an import attempt ended."""
    conn.execute(
        uploads.update()
        .where(uploads.c.upload_id == upload_id)
        .values(
            status=outcome.status,
            rows_read=outcome.rows_read,
            rows_imported=outcome.rows_imported,
            rows_updated=outcome.rows_updated,
            rows_rejected=outcome.rows_rejected,
            message=outcome.message,
            finished_at=now_utc(),
        )
    )


def mark_failed(engine: Engine, upload_id: str, message: str) -> None:
    """An import attempt crashed; the message says why (the run log has the traceback)."""
    with engine.begin() as conn:
        conn.execute(
            uploads.update()
            .where(uploads.c.upload_id == upload_id)
            .values(status="failed", message=message[:2000], finished_at=now_utc())
        )
