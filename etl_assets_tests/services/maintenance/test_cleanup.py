"""Retention cleanup on real files and real SQLite/PostgreSQL journals."""

import datetime as dt
import hashlib
import logging
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from etl_assets.samples import sales_frame, write_csv
from etl_assets.services.imports import journal
from etl_assets.services.imports.companies import options_for
from etl_assets.services.imports.importer import ImportSettings, import_upload
from etl_assets.services.imports.registration import landing_path, scan_inbox
from etl_assets.services.maintenance import cleanup
from etl_assets.services.maintenance.cleanup import REASON_SUFFIX, apply_cleanup, plan_cleanup
from etl_assets.services.storage import StoragePaths
from etl_assets.warehouse.schema import notifications
from etl_assets_tests.services.imports.importing import mark_processing
from etl_assets_tests.services.maintenance.cleanup_uploads import (
    CUTOFF,
    LONG_AGO,
    NOW,
    RETENTION,
    age,
    journalled,
    journalled_upload,
)


def _record(engine: Engine, upload_id: str) -> journal.UploadRecord:
    with engine.connect() as conn:
        record = journal.get(conn, upload_id)
    assert record is not None
    return record


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _register(paths: StoragePaths, engine: Engine, name: str, data: bytes) -> str:
    (paths.inbox / "acme").mkdir(parents=True, exist_ok=True)
    (paths.inbox / "acme" / name).write_bytes(data)
    [upload_id] = scan_inbox(engine, paths, {}, settle_seconds=0, now=time.time() + 1).registered
    return upload_id


def test_old_completed_upload_is_listed_without_force_and_removed_with_force(
    engine: Engine, paths: StoragePaths
) -> None:
    frame = sales_frame(20, seed=4)
    frame.loc[3, "quantity"] = 0  # one invalid row, so the import writes a rejects file
    path = write_csv(frame, paths.inbox / "acme" / "sales.csv")
    [upload_id] = scan_inbox(engine, paths, {}, settle_seconds=0, now=time.time() + 1).registered
    record = _record(engine, upload_id)
    result = import_upload(
        engine,
        landing_path(paths, record),
        upload_id=upload_id,
        company="acme",
        kind="sales",
        options=options_for({}, "acme"),
        rejects_path=paths.rejects_file("acme", upload_id),
        settings=ImportSettings(max_invalid_fraction=0.5),
        run_id=None,
        log=logging.getLogger("test"),
    )
    assert result.status == "completed"
    finished_at = _record(engine, upload_id).finished_at
    assert finished_at is not None
    landing, rejects = landing_path(paths, record), paths.rejects_file("acme", upload_id)
    assert not path.exists()
    assert landing.exists()
    assert rejects.exists()

    retention = dt.timedelta(days=RETENTION)
    at_boundary = plan_cleanup(engine, paths, RETENTION, finished_at + retention)
    plan = plan_cleanup(engine, paths, RETENTION, finished_at + retention + dt.timedelta(seconds=1))
    dry = apply_cleanup(engine, plan, force=False)

    assert at_boundary.counts() == dict.fromkeys(at_boundary.counts(), 0)
    assert plan.counts() == {
        "journal_rows": 1,
        "landing_files": 1,
        "rejected_files": 0,
        "rejects_files": 1,
    }
    assert plan.uploads == {upload_id: "sales"}
    assert sorted(plan.sample()) == sorted([str(landing), str(rejects)])
    assert plan.bytes == landing.stat().st_size + rejects.stat().st_size
    assert dry.dry_run
    assert dry.uploads_deleted == []
    assert dry.files_deleted == 0
    assert landing.exists()
    assert rejects.exists()
    assert journalled(engine) == {upload_id}

    done = apply_cleanup(engine, plan, force=True)

    assert done.uploads_deleted == [upload_id]
    assert (done.files_deleted, done.bytes_freed, done.files_kept) == (2, plan.bytes, [])
    assert not landing.exists()
    assert not rejects.exists()
    assert journalled(engine) == set()


def test_received_and_processing_uploads_are_never_touched(
    engine: Engine, paths: StoragePaths
) -> None:
    received = _register(paths, engine, "a.csv", b"sku,name,unit_price,stock_quantity\nA,a,1,1\n")
    processing = _register(paths, engine, "b.csv", b"sku,name,unit_price,stock_quantity\nB,b,1,1\n")
    mark_processing(engine, processing, run_id="run-1")
    landed = [
        age(landing_path(paths, _record(engine, i)), LONG_AGO) for i in (received, processing)
    ]
    far_future = journal.now_utc() + dt.timedelta(days=100 * 365)

    plan = plan_cleanup(engine, paths, RETENTION, far_future)
    done = apply_cleanup(engine, plan, force=True)

    assert plan.counts() == dict.fromkeys(plan.counts(), 0)
    assert (done.uploads_deleted, done.files_deleted) == ([], 0)
    assert all(p.exists() for p in landed)
    assert _record(engine, received).status == "received"
    assert _record(engine, processing).status == "processing"


def test_rejected_files_go_with_their_reason_files_and_rows(
    engine: Engine, paths: StoragePaths
) -> None:
    (paths.inbox / "acme").mkdir(parents=True)
    (paths.inbox / "acme" / "notes.txt").write_text("not an upload", encoding="utf-8")
    (paths.inbox / "acme" / "empty.csv").write_bytes(b"")
    rejected_ids = scan_inbox(engine, paths, {}, settle_seconds=0, now=time.time() + 1).rejected
    files = sorted(paths.rejected.iterdir())
    later = journal.now_utc() + dt.timedelta(days=RETENTION, seconds=1)

    plan = plan_cleanup(engine, paths, RETENTION, later)
    done = apply_cleanup(engine, plan, force=True)

    assert len(rejected_ids) == 2
    assert len(files) == 4
    assert sum(f.name.endswith(REASON_SUFFIX) for f in files) == 2
    assert sorted(plan.files("rejected")) == files
    assert sorted(plan.uploads) == sorted(rejected_ids)
    assert sorted(done.uploads_deleted) == sorted(rejected_ids)
    assert done.files_deleted == 4
    assert list(paths.rejected.iterdir()) == []
    assert journalled(engine) == set()


def test_an_unjournalled_rejected_file_is_dated_by_its_reason_file(
    engine: Engine, paths: StoragePaths
) -> None:
    data = age(_write(paths.rejected / "rejected.20240101T000000.0000aaaa__a.csv", b"x"), LONG_AGO)
    reason = age(_write(data.with_name(data.name + REASON_SUFFIX), b"empty file\n"), CUTOFF)

    kept = plan_cleanup(engine, paths, RETENTION, NOW)
    age(reason, CUTOFF - dt.timedelta(seconds=1))
    removed = plan_cleanup(engine, paths, RETENTION, NOW)

    assert kept.files() == []
    assert sorted(removed.files("rejected")) == sorted([data, reason])


@pytest.mark.parametrize(
    ("before_cutoff", "removed"), [(dt.timedelta(0), False), (dt.timedelta(seconds=1), True)]
)
def test_retention_boundary(
    engine: Engine, paths: StoragePaths, before_cutoff: dt.timedelta, removed: bool
) -> None:
    when = CUTOFF - before_cutoff
    finished, *_ = journalled_upload(
        engine, paths, b"finished", status="completed", received_at=LONG_AGO, finished_at=when
    )
    # A row that never finished is dated by when it was received.
    unfinished, *_ = journalled_upload(
        engine, paths, b"unfinished", status="failed", received_at=when, finished_at=None
    )
    orphan_landing = paths.landing_file("acme", hashlib.sha256(b"orphan").hexdigest(), ".csv")
    age(_write(orphan_landing, b"orphan"), when)
    orphan_rejects = age(_write(paths.rejects_file("acme", "gone.1234"), b"r"), when)

    plan = plan_cleanup(engine, paths, RETENTION, NOW)

    expected_rows = {finished: "products", unfinished: "products"} if removed else {}
    assert plan.uploads == expected_rows
    assert plan.counts() == {
        "journal_rows": 2 * removed,
        "landing_files": 3 * removed,
        "rejected_files": 0,
        "rejects_files": 3 * removed,
    }
    assert (orphan_landing in plan.files()) is removed
    assert (orphan_rejects in plan.files()) is removed


def _notified(engine: Engine, upload_id: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            notifications.insert().values(
                upload_id=upload_id,
                company="acme",
                status="completed",
                url="http://tenant.example/hook",
                payload="{}",
                created_at=LONG_AGO,
                delivered_at=LONG_AGO,
            )
        )


def _notifications_of(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(select(notifications.c.upload_id)).scalars())


def test_notifications_go_with_their_journal_rows(engine: Engine, paths: StoragePaths) -> None:
    old, *_ = journalled_upload(
        engine, paths, b"old", status="completed", received_at=LONG_AGO, finished_at=LONG_AGO
    )
    recent, *_ = journalled_upload(
        engine, paths, b"recent", status="completed", received_at=LONG_AGO, finished_at=NOW
    )
    _notified(engine, old)
    _notified(engine, recent)

    dry = apply_cleanup(engine, plan_cleanup(engine, paths, RETENTION, NOW), force=False)
    assert (dry.notifications_deleted, _notifications_of(engine)) == (0, {old, recent})
    done = apply_cleanup(engine, plan_cleanup(engine, paths, RETENTION, NOW), force=True)

    assert done.uploads_deleted == [old]
    assert done.notifications_deleted == 1
    assert _notifications_of(engine) == {recent}


def test_a_recent_duplicate_keeps_the_content_it_refers_to(
    engine: Engine, paths: StoragePaths
) -> None:
    data = b"sku,name,unit_price,stock_quantity\nA,a,1,1\n"
    upload_id, landing, rejects = journalled_upload(
        engine, paths, data, status="completed", received_at=LONG_AGO, finished_at=LONG_AGO
    )
    original = _record(engine, upload_id)
    with engine.begin() as conn:
        journal.record(
            conn,
            journal.UploadRecord(
                upload_id=f"{upload_id}.dup-1",
                company="acme",
                original_name="again.csv",
                sha256=original.sha256,
                kind="products",
                source="test",
                status="duplicate",
                received_at=CUTOFF,
                finished_at=CUTOFF,
            ),
        )

    while_recent = plan_cleanup(engine, paths, RETENTION, NOW)
    once_old = plan_cleanup(engine, paths, RETENTION, NOW + dt.timedelta(seconds=1))

    assert while_recent.counts() == dict.fromkeys(while_recent.counts(), 0)
    assert sorted(once_old.uploads) == [upload_id, f"{upload_id}.dup-1"]
    assert sorted(once_old.files()) == sorted([landing, rejects])


def test_an_upload_in_use_again_after_planning_is_kept(engine: Engine, paths: StoragePaths) -> None:
    upload_id, landing, rejects = journalled_upload(
        engine, paths, b"reimported", status="completed", received_at=LONG_AGO, finished_at=LONG_AGO
    )
    plan = plan_cleanup(engine, paths, RETENTION, NOW)
    mark_processing(engine, upload_id, run_id="rematerialised")

    done = apply_cleanup(engine, plan, force=True)

    assert plan.uploads == {upload_id: "products"}
    assert done.uploads_deleted == []
    assert sorted(done.files_kept) == sorted([str(landing), str(rejects)])
    assert landing.exists()
    assert rejects.exists()
    assert journalled(engine) == {upload_id}


def test_the_same_bytes_dropped_while_cleanup_deletes_keep_their_landing_file(
    engine: Engine, paths: StoragePaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = b"sku,name,unit_price,stock_quantity\nA,a,1,1\n"
    upload_id, landing, rejects = journalled_upload(
        engine, paths, data, status="completed", received_at=LONG_AGO, finished_at=LONG_AGO
    )
    plan = plan_cleanup(engine, paths, RETENTION, NOW)
    original = cleanup._references
    redrops: list[list[str]] = []

    def references_then_redrop(conn, groups):
        """Each time cleanup has looked up what refers to its files, the bytes come back."""
        found = original(conn, groups)
        _write(paths.inbox / "acme" / "again.csv", data)
        scan = scan_inbox(engine, paths, {}, settle_seconds=0, now=time.time() + 1)
        redrops.append(scan.registered + scan.duplicates)
        return found

    monkeypatch.setattr(cleanup, "_references", references_then_redrop)
    done = apply_cleanup(engine, plan, force=True)

    assert plan.uploads == {upload_id: "products"}
    assert done.uploads_deleted == [upload_id]
    # The first re-drop is a new upload (its old row is gone); later ones are the same upload.
    assert redrops[0] == [upload_id]
    assert all(len(ids) == 1 and ids[0].startswith(upload_id) for ids in redrops)
    assert landing.read_bytes() == data
    assert rejects.exists()  # the new upload has the same id: its row refers to it too
    assert str(landing) in done.files_kept
    assert _record(engine, upload_id).status == "received"
    assert list((paths.inbox / "acme").iterdir()) == []


def test_files_set_aside_get_their_names_back_when_the_last_check_fails(
    engine: Engine, paths: StoragePaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, landing, rejects = journalled_upload(
        engine, paths, b"old", status="completed", received_at=LONG_AGO, finished_at=LONG_AGO
    )
    plan = plan_cleanup(engine, paths, RETENTION, NOW)
    original = cleanup._references
    checks: list[list[bool]] = []

    def lose_the_warehouse_on_the_last_check(conn, groups):
        checks.append([all(not p.exists() for p in g.paths) for g in groups])
        if len(checks) == 2:
            raise ConnectionError("warehouse gone")
        return original(conn, groups)

    monkeypatch.setattr(cleanup, "_references", lose_the_warehouse_on_the_last_check)
    with pytest.raises(ConnectionError, match="warehouse gone"):
        apply_cleanup(engine, plan, force=True)

    # The second check ran with both files set aside; after it failed they are back as they were.
    assert checks == [[False, False], [True, True]]
    assert landing.read_bytes() == b"old"
    assert rejects.exists()
    assert sorted(p.name for p in paths.landing.rglob("*") if p.is_file()) == [landing.name]
    assert sorted(p.name for p in paths.rejects.rglob("*") if p.is_file()) == [rejects.name]


def test_retention_must_be_at_least_a_day(engine: Engine, paths: StoragePaths) -> None:
    with pytest.raises(ValueError, match="retention_days must be at least 1, got 0"):
        plan_cleanup(engine, paths, 0, NOW)
