"""What the API reads about uploads: the status service on SQLite and PostgreSQL, and the
pending markers against a real inbox."""

import datetime as dt
import os

import pytest
from sqlalchemy import Engine

from etl_assets.services.imports import journal, status
from etl_assets.services.storage import StoragePaths

T0 = dt.datetime(2025, 3, 1, 9, 0, tzinfo=dt.UTC)


def _record(
    engine: Engine, upload_id: str, minute: int, state: str = "completed", company: str = "acme"
) -> journal.UploadRecord:
    entry = journal.UploadRecord(
        upload_id=upload_id,
        company=company,
        original_name=f"{upload_id}.csv",
        sha256=None,
        kind="products",
        source=None,
        status=state,
        received_at=T0 + dt.timedelta(minutes=minute),
    )
    with engine.begin() as conn:
        journal.record(conn, entry)
    return entry


def _all_pages(engine: Engine, **query: object) -> list[list[str]]:
    pages, cursor = [], None
    while True:
        with engine.connect() as conn:
            page = status.list_uploads(conn, "acme", cursor=cursor, **query)
        pages.append([r.upload_id for r in page.uploads])
        cursor = page.next_cursor
        if cursor is None:
            return pages


def test_pages_hold_the_company_s_uploads_newest_first(engine: Engine) -> None:
    for minute in range(5):
        _record(engine, f"acme.{minute}", minute)
    _record(engine, "globex.9", 9, company="globex")

    assert _all_pages(engine, limit=2) == [["acme.4", "acme.3"], ["acme.2", "acme.1"], ["acme.0"]]


def test_uploads_received_at_the_same_instant_are_paged_by_id(engine: Engine) -> None:
    for name in ("c", "a", "b"):
        _record(engine, f"acme.{name}", 0)

    assert _all_pages(engine, limit=2) == [["acme.c", "acme.b"], ["acme.a"]]


def test_uploads_journalled_between_pages_shift_nothing(engine: Engine) -> None:
    for minute in range(4):
        _record(engine, f"acme.{minute}", minute)
    with engine.connect() as conn:
        first = status.list_uploads(conn, "acme", limit=2)
    _record(engine, "acme.new", 10)

    with engine.connect() as conn:
        second = status.list_uploads(conn, "acme", limit=2, cursor=first.next_cursor)

    assert [r.upload_id for r in second.uploads] == ["acme.1", "acme.0"]
    assert second.next_cursor is None


def test_status_and_since_filter_the_pages(engine: Engine) -> None:
    _record(engine, "acme.old-rejected", 0, "rejected")
    _record(engine, "acme.rejected", 5, "rejected")
    _record(engine, "acme.completed", 6, "completed")

    filtered = _all_pages(engine, status="rejected", since=T0 + dt.timedelta(minutes=5))

    assert filtered == [["acme.rejected"]]


BAD_QUERIES = [
    ({"status": "pending"}, "unknown status 'pending'"),
    ({"limit": 0}, "limit must be between 1 and 1000"),
    ({"limit": 1001}, "limit must be between 1 and 1000"),
    ({"cursor": "not-a-cursor"}, "invalid cursor"),
    ({"since": dt.datetime(2025, 1, 1)}, "has no timezone"),
]


def test_a_bad_query_is_refused_with_a_reason(engine: Engine) -> None:
    for query, message in BAD_QUERIES:
        with engine.connect() as conn, pytest.raises(status.QueryError, match=message):
            status.list_uploads(conn, "acme", **query)


def test_another_company_s_upload_is_not_found(engine: Engine) -> None:
    _record(engine, "globex.0123456789abcdef", 0, company="globex")

    with engine.connect() as conn:
        assert status.get_upload(conn, "acme", "globex.0123456789abcdef") is None
        assert status.get_upload(conn, "globex", "globex.0123456789abcdef") is not None


UPLOAD_ID = "acme.0123456789abcdef"


def _placed(paths: StoragePaths, name: str = "products.csv") -> int:
    path = paths.inbox / "acme" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"sku,name\n")
    return os.stat(path).st_ino


def test_a_placed_upload_is_pending_while_its_file_is_in_the_inbox(paths: StoragePaths) -> None:
    status.note_placed(paths, "acme", UPLOAD_ID, _placed(paths))

    assert status.is_pending(paths, "acme", UPLOAD_ID) is True
    (paths.inbox / "acme" / "products.csv").rename(paths.landing / "moved.csv")
    assert status.is_pending(paths, "acme", UPLOAD_ID) is False


def test_a_placed_upload_is_pending_for_its_company_only(paths: StoragePaths) -> None:
    status.note_placed(paths, "acme", UPLOAD_ID, _placed(paths))

    assert status.is_pending(paths, "globex", UPLOAD_ID) is False


def test_placing_prunes_the_markers_of_files_that_left_the_inbox(paths: StoragePaths) -> None:
    status.note_placed(paths, "acme", UPLOAD_ID, _placed(paths))
    # Landed, as the sensor does: moved out of the inbox.
    (paths.inbox / "acme" / "products.csv").rename(paths.landing / "moved.csv")

    status.note_placed(paths, "acme", "acme.fedcba9876543210", _placed(paths, "sales.csv"))

    markers = paths.data_dir / "api" / "pending" / "acme"
    assert sorted(p.name for p in markers.iterdir()) == ["acme.fedcba9876543210"]
