"""Registration of inbox files (`scan_inbox`) and the journal rows it writes, on both dialects."""

import hashlib
import os
import stat
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from etl_assets.samples import products_frame, sales_frame, write_csv, write_xlsx
from etl_assets.services import journal
from etl_assets.services.registration import (
    ScanResult,
    landing_path,
    scan_inbox,
    upload_id_for,
)
from etl_assets.services.storage import StoragePaths
from etl_assets.warehouse.schema import uploads

# A fixed clock far from "now": settle decisions depend only on the mtimes set by the tests.
T0 = 1_700_000_000.0


def _set_mtime(path: Path, mtime: float) -> None:
    os.utime(path, (mtime, mtime), follow_symlinks=not path.is_symlink())


def _scan(engine: Engine, paths: StoragePaths, *, settle: float = 0, now: float = T0 + 60):
    return scan_inbox(engine, paths, {}, settle_seconds=settle, now=now)


def _drop(path: Path, data: bytes, mtime: float = T0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    _set_mtime(path, mtime)
    return path


def _products_csv(rows: int = 5, seed: int = 0) -> bytes:
    return products_frame(rows, seed=seed).to_csv(index=False).encode()


def _journal(engine: Engine) -> list[journal.UploadRecord]:
    with engine.connect() as conn:
        rows = conn.execute(select(uploads).order_by(uploads.c.upload_id)).mappings().all()
    return [journal.UploadRecord(**row) for row in rows]


def _unfinished(engine: Engine) -> list[journal.UploadRecord]:
    with engine.connect() as conn:
        return journal.unfinished(conn, limit=100)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() or p.is_symlink())


def _assert_rejected(
    engine: Engine,
    paths: StoragePaths,
    scan: ScanResult,
    *,
    name: str,
    company: str | None,
    reason: str,
) -> tuple[journal.UploadRecord, Path]:
    """One rejection: journalled, moved to `rejected/` with a reason file, gone from the inbox."""
    assert scan.registered == []
    assert scan.duplicates == []
    assert len(scan.rejected) == 1
    [row] = _journal(engine)
    assert row.upload_id == scan.rejected[0]
    assert row.status == "rejected"
    assert row.original_name == name
    assert row.company == company
    assert row.kind is None
    assert row.finished_at is not None
    assert reason in (row.message or "")
    moved = paths.rejected / f"{row.upload_id}__{name}"
    assert f"(moved to {moved})" in (row.message or "")
    assert os.path.lexists(moved)
    reason_file = moved.with_name(f"{moved.name}.reason.txt")
    reason_text = reason_file.read_text(encoding="utf-8")
    assert reason in reason_text
    assert f"from: {row.source}" in reason_text
    assert [p.name for p in _files(paths.inbox)] == []
    assert _files(paths.landing) == []
    assert _unfinished(engine) == []
    return row, moved


@pytest.mark.parametrize(
    ("relative", "kind", "writer"),
    [
        ("acme/products.csv", "products", lambda f, p: write_csv(f, p)),
        ("acme/sales-2025.csv.gz", "sales", lambda f, p: write_csv(f, p)),
        ("globex/catalogue.xlsx", "products", write_xlsx),
        ("globex/Sales.CSV", "sales", lambda f, p: write_csv(f, p)),
    ],
)
def test_settled_file_lands_read_only_under_its_hash(
    engine: Engine, paths: StoragePaths, relative: str, kind: str, writer
) -> None:
    frame = products_frame(12, seed=3) if kind == "products" else sales_frame(12, seed=3)
    source = writer(frame, paths.inbox / relative)
    _set_mtime(source, T0)
    data = source.read_bytes()
    company = relative.split("/")[0]
    suffix = ".csv.gz" if relative.endswith(".gz") else Path(relative).suffix.lower()

    scan = _scan(engine, paths)

    expected_id = upload_id_for(company, _sha(data))
    assert scan.registered == [expected_id]
    assert (scan.rejected, scan.duplicates, scan.waiting) == ([], [], 0)
    assert scan.max_mtime == T0
    assert not source.exists()
    landing = paths.landing / company / f"{_sha(data)}{suffix}"
    assert _files(paths.landing) == [landing]
    assert landing.read_bytes() == data
    assert stat.S_IMODE(landing.stat().st_mode) == 0o444
    [row] = _journal(engine)
    assert (row.upload_id, row.company, row.kind, row.status) == (
        expected_id,
        company,
        kind,
        "received",
    )
    assert (row.original_name, row.sha256) == (Path(relative).name, _sha(data))
    assert row.source is not None
    assert row.source.endswith(f": inbox/{relative}")
    [pending] = _unfinished(engine)
    assert (pending.upload_id, pending.company, pending.kind) == (expected_id, company, kind)
    assert landing_path(paths, pending) == landing
    assert pending.size_bytes == len(data)
    assert pending.dropped_at is not None


def test_file_at_inbox_root_is_rejected(engine: Engine, paths: StoragePaths) -> None:
    data = _products_csv()
    _drop(paths.inbox / "stray.csv", data)

    scan = _scan(engine, paths)

    _, moved = _assert_rejected(
        engine,
        paths,
        scan,
        name="stray.csv",
        company=None,
        reason="not inside a company directory: put files in <inbox>/<company>/",
    )
    assert moved.read_bytes() == data


@pytest.mark.parametrize("company", ["Bad Company", "ACME", "-acme", "acme.corp", "a" * 64])
def test_invalid_company_directory_is_rejected(
    engine: Engine, paths: StoragePaths, company: str
) -> None:
    data = _products_csv()
    _drop(paths.inbox / company / "products.csv", data)

    scan = _scan(engine, paths)

    _, moved = _assert_rejected(
        engine,
        paths,
        scan,
        name="products.csv",
        company=None,
        reason=f"invalid company directory {company!r}",
    )
    assert moved.read_bytes() == data


@pytest.mark.parametrize("where", ["inside", "outside"])
def test_symlink_is_rejected_and_its_target_left_alone(
    engine: Engine, paths: StoragePaths, tmp_path: Path, where: str
) -> None:
    data = _products_csv()
    # Inside: a hidden staging area the scan ignores, so only the link is a candidate.
    target_dir = paths.inbox / ".staging" if where == "inside" else tmp_path / "elsewhere"
    target = _drop(target_dir / "real.csv", data)
    link = paths.inbox / "acme" / "linked.csv"
    link.parent.mkdir(parents=True)
    link.symlink_to(target)
    _set_mtime(link, T0)

    scan = _scan(engine, paths)

    assert scan.registered == []
    assert len(scan.rejected) == 1
    [row] = _journal(engine)
    assert row.status == "rejected"
    assert row.company == "acme"
    assert "symbolic links are not accepted" in (row.message or "")
    moved = paths.rejected / f"{row.upload_id}__linked.csv"
    assert moved.is_symlink()
    assert Path(os.readlink(moved)) == target
    assert "symbolic links" in moved.with_name(f"{moved.name}.reason.txt").read_text()
    assert not link.exists()
    assert not link.is_symlink()
    assert target.read_bytes() == data
    assert target.stat().st_mtime == T0
    assert _files(paths.landing) == []


def test_symlinked_directory_is_rejected_not_walked(
    engine: Engine, paths: StoragePaths, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    secret = _drop(outside / "products.csv", _products_csv())
    (paths.inbox / "acme").mkdir()
    link = paths.inbox / "acme" / "exports"
    link.symlink_to(outside, target_is_directory=True)
    _set_mtime(link, T0)

    scan = _scan(engine, paths)

    assert scan.registered == []
    assert len(scan.rejected) == 1
    [row] = _journal(engine)
    assert row.status == "rejected"
    assert row.original_name == "exports"
    assert "symbolic links are not accepted" in (row.message or "")
    assert (paths.rejected / f"{row.upload_id}__exports").is_symlink()
    assert secret.read_bytes() == _products_csv()
    assert _files(paths.landing) == []


def test_named_pipe_is_rejected_without_being_opened(engine: Engine, paths: StoragePaths) -> None:
    pipe = paths.inbox / "acme" / "products.csv"
    pipe.parent.mkdir()
    os.mkfifo(pipe)
    _set_mtime(pipe, T0)

    scan = _scan(engine, paths)

    _, moved = _assert_rejected(
        engine, paths, scan, name="products.csv", company="acme", reason="not a regular file"
    )
    assert stat.S_ISFIFO(moved.lstat().st_mode)


def test_file_in_nested_directory_is_rejected(engine: Engine, paths: StoragePaths) -> None:
    data = _products_csv()
    _drop(paths.inbox / "acme" / "2025" / "products.csv", data)

    scan = _scan(engine, paths)

    _, moved = _assert_rejected(
        engine,
        paths,
        scan,
        name="products.csv",
        company="acme",
        reason="nested directories are not supported: put files directly in <inbox>/acme/",
    )
    assert moved.read_bytes() == data


@pytest.mark.parametrize(
    "relative",
    [
        "acme/products.csv.part",
        "acme/products.csv.tmp",
        "acme/products.csv.crdownload",
        "acme/products.CSV.PART",
        "acme/.products.csv",
        "acme/.hidden/products.csv",
        ".trash/acme/products.csv",
        ".stray.csv",
    ],
)
def test_ignored_names_get_no_journal_row_and_stay(
    engine: Engine, paths: StoragePaths, relative: str
) -> None:
    data = _products_csv()
    path = _drop(paths.inbox / relative, data)

    scan = _scan(engine, paths)

    assert scan == ScanResult()
    assert _journal(engine) == []
    assert path.read_bytes() == data
    assert _files(paths.rejected) == []
    assert _files(paths.landing) == []


def test_empty_file_is_rejected(engine: Engine, paths: StoragePaths) -> None:
    _drop(paths.inbox / "acme" / "empty.csv", b"")

    scan = _scan(engine, paths)

    row, moved = _assert_rejected(
        engine, paths, scan, name="empty.csv", company="acme", reason="empty file (no bytes)"
    )
    assert row.sha256 is None
    assert moved.stat().st_size == 0


def test_binary_garbage_is_rejected(engine: Engine, paths: StoragePaths) -> None:
    data = bytes(range(256)) * 8
    _drop(paths.inbox / "acme" / "products.csv", data)

    scan = _scan(engine, paths)

    row, moved = _assert_rejected(
        engine, paths, scan, name="products.csv", company="acme", reason="undecodable"
    )
    assert row.sha256 == _sha(data)
    assert moved.read_bytes() == data


@pytest.mark.parametrize("name", ["catalogue.xlsx", "sales.csv.gz"])
def test_corrupt_container_is_rejected(engine: Engine, paths: StoragePaths, name: str) -> None:
    data = b"this is not a zip nor a gzip stream\n"
    _drop(paths.inbox / "acme" / name, data)

    scan = _scan(engine, paths)

    _, moved = _assert_rejected(engine, paths, scan, name=name, company="acme", reason="unreadable")
    assert moved.read_bytes() == data


def test_unknown_kind_is_rejected(engine: Engine, paths: StoragePaths) -> None:
    data = b"hello,world\n1,2\n"
    _drop(paths.inbox / "acme" / "notes.csv", data)

    scan = _scan(engine, paths)

    row, moved = _assert_rejected(
        engine,
        paths,
        scan,
        name="notes.csv",
        company="acme",
        reason=(
            "unknown kind: the header matches neither products nor sales (columns: hello, world)"
        ),
    )
    assert row.sha256 == _sha(data)
    assert moved.read_bytes() == data


@pytest.mark.parametrize("name", ["products.txt", "products.json", "products.xls", "README"])
def test_unsupported_extension_is_rejected(engine: Engine, paths: StoragePaths, name: str) -> None:
    data = _products_csv()
    _drop(paths.inbox / "acme" / name, data)

    scan = _scan(engine, paths)

    _, moved = _assert_rejected(
        engine,
        paths,
        scan,
        name=name,
        company="acme",
        reason=f"unsupported file type {name!r} (use .csv, .csv.gz or .xlsx)",
    )
    assert moved.read_bytes() == data


def test_byte_identical_redrop_is_journalled_as_duplicate(
    engine: Engine, paths: StoragePaths
) -> None:
    data = _products_csv()
    _drop(paths.inbox / "acme" / "products.csv", data)
    first = _scan(engine, paths)
    [first_id] = first.registered

    again = _drop(paths.inbox / "acme" / "products-again.csv", data, mtime=T0 + 1)
    second = _scan(engine, paths, now=T0 + 120)
    third_copy = _drop(paths.inbox / "acme" / "products.csv", data, mtime=T0 + 2)
    third = _scan(engine, paths, now=T0 + 180)

    assert (second.registered, second.rejected) == ([], [])
    assert second.duplicates == [f"{first_id}.dup-1"]
    assert third.duplicates == [f"{first_id}.dup-2"]
    assert not again.exists()
    assert not third_copy.exists()
    assert _files(paths.landing) == [paths.landing / "acme" / f"{_sha(data)}.csv"]
    rows = {row.upload_id: row for row in _journal(engine)}
    assert set(rows) == {first_id, f"{first_id}.dup-1", f"{first_id}.dup-2"}
    duplicate = rows[f"{first_id}.dup-1"]
    assert duplicate.status == "duplicate"
    assert (duplicate.company, duplicate.kind, duplicate.sha256) == ("acme", "products", _sha(data))
    assert duplicate.original_name == "products-again.csv"
    assert "identical to products.csv" in (duplicate.message or "")
    assert f"upload {first_id}" in (duplicate.message or "")
    assert rows[first_id].status == "received"
    assert [p.upload_id for p in _unfinished(engine)] == [first_id]


def test_same_bytes_in_two_companies_are_two_uploads(engine: Engine, paths: StoragePaths) -> None:
    data = _products_csv()
    _drop(paths.inbox / "acme" / "products.csv", data)
    _drop(paths.inbox / "globex" / "products.csv", data)

    scan = _scan(engine, paths)

    sha = _sha(data)
    assert sorted(scan.registered) == [upload_id_for("acme", sha), upload_id_for("globex", sha)]
    assert scan.duplicates == []
    assert _files(paths.landing) == [
        paths.landing / "acme" / f"{sha}.csv",
        paths.landing / "globex" / f"{sha}.csv",
    ]
    pending = {p.company: p for p in _unfinished(engine)}
    assert set(pending) == {"acme", "globex"}
    assert pending["acme"].upload_id != pending["globex"].upload_id


def test_file_newer_than_settle_time_waits(engine: Engine, paths: StoragePaths) -> None:
    data = _products_csv()
    fresh = _drop(paths.inbox / "acme" / "products.csv", data, mtime=T0)
    old = _drop(paths.inbox / "acme" / "sales.csv", sales_frame(3).to_csv(index=False).encode())
    _set_mtime(old, T0 - 100)

    early = _scan(engine, paths, settle=5, now=T0 + 4.5)

    assert early.waiting == 1
    assert len(early.registered) == 1
    assert early.max_mtime == T0 - 100
    assert fresh.read_bytes() == data
    assert [row.original_name for row in _journal(engine)] == ["sales.csv"]

    settled = _scan(engine, paths, settle=5, now=T0 + 5)

    assert settled.waiting == 0
    assert settled.registered == [upload_id_for("acme", _sha(data))]
    assert settled.max_mtime == T0
    assert not fresh.exists()


def test_scan_limit_leaves_the_rest_for_the_next_scan(engine: Engine, paths: StoragePaths) -> None:
    for seed in range(3):
        _drop(paths.inbox / "acme" / f"products-{seed}.csv", _products_csv(seed=seed))

    limited = scan_inbox(engine, paths, {}, settle_seconds=0, now=T0 + 60, limit=2)
    left = _files(paths.inbox)
    rest = _scan(engine, paths)

    assert len(limited.registered) == 2
    assert [p.name for p in left] == ["products-2.csv"]
    assert len(rest.registered) == 1
    assert _files(paths.inbox) == []
    assert len(_unfinished(engine)) == 3


def test_crash_between_journal_and_move_is_repaired_by_next_scan(
    engine: Engine, paths: StoragePaths
) -> None:
    data = _products_csv()
    source = _drop(paths.inbox / "acme" / "products.csv", data)
    upload_id = upload_id_for("acme", _sha(data))
    # What `scan_inbox` had written when the process died: the row, but the file not yet moved.
    with engine.begin() as conn:
        journal.record(
            conn,
            journal.UploadRecord(
                upload_id=upload_id,
                company="acme",
                original_name="products.csv",
                sha256=_sha(data),
                kind="products",
                source="tester: inbox/acme/products.csv",
                status="received",
                received_at=journal.now_utc(),
            ),
        )

    scan = _scan(engine, paths)

    assert scan.registered == [upload_id]
    assert scan.duplicates == []
    assert scan.rejected == []
    assert not source.exists()
    landing = paths.landing / "acme" / f"{_sha(data)}.csv"
    assert landing.read_bytes() == data
    [row] = _journal(engine)
    assert (row.upload_id, row.status) == (upload_id, "received")
    [pending] = _unfinished(engine)
    assert (pending.upload_id, landing_path(paths, pending)) == (upload_id, landing)


def test_received_upload_stays_unfinished_until_its_import_ends(
    engine: Engine, paths: StoragePaths
) -> None:
    products = _products_csv()
    sales = sales_frame(4).to_csv(index=False).encode()
    _drop(paths.inbox / "acme" / "products.csv", products)
    _drop(paths.inbox / "acme" / "sales.csv", sales)
    scan = _scan(engine, paths)
    expected = {upload_id_for("acme", _sha(products)), upload_id_for("acme", _sha(sales))}
    assert set(scan.registered) == expected

    offered = {p.upload_id for p in _unfinished(engine)}
    # The run requests were lost (sensor crashed): a later scan with an empty inbox offers again.
    rescan = _scan(engine, paths)
    offered_again = {p.upload_id: p for p in _unfinished(engine)}

    assert offered == expected
    assert set(offered_again) == expected
    assert rescan == ScanResult()
    assert {p.kind for p in offered_again.values()} == {"products", "sales"}
    assert all(landing_path(paths, p).is_file() for p in offered_again.values())

    started = upload_id_for("acme", _sha(products))
    journal.mark_processing(engine, started, run_id="run-1")
    statuses = {p.upload_id: p.status for p in _unfinished(engine)}
    assert statuses == {started: "processing", upload_id_for("acme", _sha(sales)): "received"}
    with engine.begin() as conn:
        journal.finish(conn, started, journal.Outcome("completed", 1, 1, 0, 0, "done"))
    assert [p.upload_id for p in _unfinished(engine)] == [upload_id_for("acme", _sha(sales))]


def test_a_very_long_name_is_rejected_into_a_valid_path(engine, paths):
    name = "x" * 240 + ".txt"
    _drop(paths.inbox / "acme" / name, b"sku,name\n")

    scan = _scan(engine, paths)

    [row] = _journal(engine)
    assert row.upload_id == scan.rejected[0]
    assert row.original_name == name
    moved = [p for p in _files(paths.rejected) if not p.name.endswith(".reason.txt")]
    assert len(moved) == 1
    assert moved[0].name.endswith(name[-150:])
    assert moved[0].read_bytes() == b"sku,name\n"


def test_duplicates_are_numbered_per_company_and_content(engine, paths):
    """`_` in a slug is a LIKE wildcard: `a_b` must not count `a0b`'s re-drops (scanned first)."""
    data = _products_csv()
    for company in ("a0b", "a_b"):
        _drop(paths.inbox / company / "p.csv", data)
    _scan(engine, paths)
    for company in ("a0b", "a_b"):
        _drop(paths.inbox / company / "again.csv", data)
    scan = _scan(engine, paths)

    assert sorted(scan.duplicates) == sorted(
        f"{upload_id_for(c, _sha(data))}.dup-1" for c in ("a0b", "a_b")
    )
