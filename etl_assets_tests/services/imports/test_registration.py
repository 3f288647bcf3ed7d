"""Registration of inbox files (`scan_inbox`) and the journal rows it writes, on both dialects."""

import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from etl_assets.samples import products_frame, sales_frame, write_csv, write_xlsx
from etl_assets.services.imports import journal, reading, registration
from etl_assets.services.imports.registration import (
    ScanResult,
    landing_path,
    scan_inbox,
    upload_id_for,
)
from etl_assets.services.maintenance.cleanup import plan_cleanup
from etl_assets.services.storage import StoragePaths
from etl_assets.warehouse.schema import uploads
from etl_assets_tests.services.imports.importing import mark_processing

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
    mark_processing(engine, started, run_id="run-1")
    statuses = {p.upload_id: p.status for p in _unfinished(engine)}
    assert statuses == {started: "processing", upload_id_for("acme", _sha(sales)): "received"}
    with engine.begin() as conn:
        journal.finish(
            conn, started, journal.Outcome("completed", 1, 1, 0, 0, "done", journal.now_utc())
        )
    assert [p.upload_id for p in _unfinished(engine)] == [upload_id_for("acme", _sha(sales))]


@pytest.mark.parametrize(
    "name",
    [
        # 150 characters, 228 bytes: `<id>__<name>` was longer than a file name may be.
        "\N{GRINNING FACE}" * 26 + "x" * 120 + ".txt",
        # 215 bytes: the file moved, but `<id>__<name>.reason.txt` was too long.
        "\N{LATIN SMALL LETTER E WITH ACUTE}" * 100 + "x" * 11 + ".txt",
        # The longest name a file can have (255 bytes).
        "x" * 251 + ".txt",
    ],
    ids=["emoji-228-bytes", "accents-215-bytes", "ascii-255-bytes"],
)
def test_a_long_name_is_rejected_and_journalled_with_names_that_fit(
    engine: Engine, paths: StoragePaths, name: str
) -> None:
    _drop(paths.inbox / "acme" / name, b"sku,name\n")

    scan = _scan(engine, paths)
    again = _scan(engine, paths)

    assert (scan.errors, scan.registered) == ([], [])
    [row] = _journal(engine)
    assert scan.rejected == [row.upload_id]
    assert row.original_name == name
    assert f"inbox/acme/{name}" in (row.source or "")
    [reason_file] = [p for p in _files(paths.rejected) if p.name.endswith(".reason.txt")]
    [moved] = [p for p in _files(paths.rejected) if p != reason_file]
    assert reason_file.name == f"{moved.name}.reason.txt"
    assert "unsupported file type" in reason_file.read_text(encoding="utf-8")
    assert all(len(os.fsencode(p.name)) <= 255 for p in (moved, reason_file))
    # Cut by bytes between whole characters, keeping the end of the name (its suffix).
    prefix = f"{row.upload_id}__"
    assert moved.name.startswith(prefix)
    assert name.endswith(moved.name.removeprefix(prefix))
    assert moved.name.endswith("x.txt")
    assert f"(moved to {moved})" in (row.message or "")
    assert moved.read_bytes() == b"sku,name\n"
    assert _files(paths.inbox) == []
    assert again == ScanResult()
    # Journalled, so cleanup keeps it for the retention instead of taking it for an orphan.
    assert plan_cleanup(engine, paths, 1, journal.now_utc()).files() == []


def _swap(path: Path, data: bytes, mtime: float) -> None:
    """Put another file (a new inode) at `path` in one rename, as a competing writer would."""
    _drop(path.with_name(f".swap-{path.name}"), data, mtime)
    os.replace(path.with_name(f".swap-{path.name}"), path)


def _after(monkeypatch: pytest.MonkeyPatch, owner: object, name: str, action) -> None:
    """Run `action` once, right after the first call of `owner.name` returns."""
    original = getattr(owner, name)
    pending = [action]

    def wrapper(*args, **kwargs):
        result = original(*args, **kwargs)
        while pending:
            pending.pop()()
        return result

    monkeypatch.setattr(owner, name, wrapper)


# Same size and mtime, different bytes: only the inode tells the two files apart.
FIRST = b"sku,name,unit_price,stock_quantity\nA,a,1,1\n"
SECOND = b"sku,name,unit_price,stock_quantity\nB,b,2,2\n"


@pytest.mark.parametrize("step", ["hashing", "reading the header"])
def test_a_file_swapped_before_it_is_journalled_waits_for_the_next_scan(
    engine: Engine, paths: StoragePaths, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    path = _drop(paths.inbox / "acme" / "products.csv", FIRST)
    owner, name = (registration, "_sha256") if step == "hashing" else (reading, "read_header")
    _after(monkeypatch, owner, name, lambda: _swap(path, SECOND, T0))

    swapped = _scan(engine, paths)

    assert (swapped.registered, swapped.rejected, swapped.duplicates) == ([], [], [])
    assert swapped.waiting == 1
    assert _journal(engine) == []
    assert _files(paths.landing) == []
    assert path.read_bytes() == SECOND

    monkeypatch.undo()
    later = _scan(engine, paths)

    assert later.registered == [upload_id_for("acme", _sha(SECOND))]
    assert (paths.landing / "acme" / f"{_sha(SECOND)}.csv").read_bytes() == SECOND
    assert not (paths.landing / "acme" / f"{_sha(FIRST)}.csv").exists()


def test_a_file_swapped_just_before_the_move_is_put_back_and_the_hashed_bytes_land(
    engine: Engine, paths: StoragePaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _drop(paths.inbox / "acme" / "products.csv", FIRST)
    # The row is written after the last check and before the move: the narrowest window.
    _after(monkeypatch, journal, "record", lambda: _swap(path, SECOND, T0))

    scan = _scan(engine, paths)

    first_id = upload_id_for("acme", _sha(FIRST))
    assert scan.registered == [first_id]
    landing = paths.landing / "acme" / f"{_sha(FIRST)}.csv"
    assert landing.read_bytes() == FIRST
    assert stat.S_IMODE(landing.stat().st_mode) == 0o444
    assert _files(paths.landing) == [landing]
    assert path.read_bytes() == SECOND

    monkeypatch.undo()
    later = _scan(engine, paths)

    assert later.registered == [upload_id_for("acme", _sha(SECOND))]
    assert _files(paths.inbox) == []
    assert {row.upload_id for row in _unfinished(engine)} == {
        first_id,
        upload_id_for("acme", _sha(SECOND)),
    }


@pytest.mark.parametrize(
    ("step", "change"),
    [
        ("hashing", "swapped"),
        ("journalling the duplicate", "swapped"),
        ("journalling the duplicate", "rewritten in place"),
    ],
)
def test_a_file_changed_over_a_duplicate_is_not_deleted(
    engine: Engine, paths: StoragePaths, monkeypatch: pytest.MonkeyPatch, step: str, change: str
) -> None:
    _drop(paths.inbox / "acme" / "products.csv", FIRST)
    [first_id] = _scan(engine, paths).registered
    again = _drop(paths.inbox / "acme" / "again.csv", FIRST)
    owner, name = (registration, "_sha256") if step == "hashing" else (journal, "record")
    # Rewritten in place: same inode, other bytes, and an mtime that is still settled.
    action = (
        (lambda: _swap(again, SECOND, T0))
        if change == "swapped"
        else (lambda: _drop(again, SECOND, T0 + 1))
    )
    _after(monkeypatch, owner, name, action)

    changed = _scan(engine, paths)

    # The hashed copy was a duplicate only if it got as far as the journal.
    expected = [f"{first_id}.dup-1"] if step == "journalling the duplicate" else []
    assert changed.duplicates == expected
    assert [row.upload_id for row in _journal(engine)] == [first_id, *expected]
    assert again.read_bytes() == SECOND

    monkeypatch.undo()
    later = _scan(engine, paths)

    assert later.registered == [upload_id_for("acme", _sha(SECOND))]
    assert (paths.landing / "acme" / f"{_sha(SECOND)}.csv").read_bytes() == SECOND
    assert (paths.landing / "acme" / f"{_sha(FIRST)}.csv").read_bytes() == FIRST


@pytest.fixture
def tmpfs_inbox() -> Iterator[Path]:
    """An inbox on a tmpfs, another filesystem than the data directory's."""
    root = Path(tempfile.mkdtemp(prefix="etl-inbox-", dir="/dev/shm"))
    yield root / "inbox"
    shutil.rmtree(root)


@pytest.mark.parametrize("swapped", [False, True], ids=["plain", "swapped-before-the-move"])
def test_an_inbox_on_another_filesystem_lands_a_copy_of_the_hashed_bytes(
    engine: Engine,
    paths: StoragePaths,
    tmpfs_inbox: Path,
    monkeypatch: pytest.MonkeyPatch,
    swapped: bool,
) -> None:
    paths = StoragePaths(data_dir=paths.data_dir, inbox=tmpfs_inbox)
    path = _drop(paths.inbox / "acme" / "products.csv", FIRST)
    assert path.stat().st_dev != paths.landing.stat().st_dev
    if swapped:
        _after(monkeypatch, journal, "record", lambda: _swap(path, SECOND, T0))

    scan = _scan(engine, paths)

    assert scan.registered == [upload_id_for("acme", _sha(FIRST))]
    landing = paths.landing / "acme" / f"{_sha(FIRST)}.csv"
    assert _files(paths.landing) == [landing]
    assert landing.read_bytes() == FIRST
    assert stat.S_IMODE(landing.stat().st_mode) == 0o444
    # The inbox copy goes only if it is the file that was hashed.
    assert [p.read_bytes() for p in _files(paths.inbox)] == ([SECOND] if swapped else [])


def test_a_hard_link_to_a_file_outside_the_inbox_is_rejected_and_that_file_left_alone(
    engine: Engine, paths: StoragePaths, tmp_path: Path
) -> None:
    data = _products_csv()
    other = _drop(tmp_path / "elsewhere" / "real.csv", data)
    other.chmod(0o640)
    link = paths.inbox / "acme" / "products.csv"
    link.parent.mkdir()
    os.link(other, link)

    scan = _scan(engine, paths)

    row, moved = _assert_rejected(
        engine,
        paths,
        scan,
        name="products.csv",
        company="acme",
        reason="hard links are not accepted (the file has 2 names): copy the file itself",
    )
    assert row.sha256 is None
    assert moved.read_bytes() == data
    assert other.read_bytes() == data
    assert stat.S_IMODE(other.stat().st_mode) == 0o640


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


def test_a_hard_link_made_just_before_the_move_does_not_share_the_landed_file(
    engine: Engine, paths: StoragePaths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _drop(paths.inbox / "acme" / "products.csv", FIRST)
    path.chmod(0o640)
    outside = tmp_path / "kept-elsewhere.csv"
    _after(monkeypatch, journal, "record", lambda: os.link(path, outside))

    scan = _scan(engine, paths)

    assert scan.registered == [upload_id_for("acme", _sha(FIRST))]
    landing = paths.landing / "acme" / f"{_sha(FIRST)}.csv"
    assert landing.read_bytes() == FIRST
    assert landing.stat().st_nlink == 1
    assert not os.path.samefile(landing, outside)
    assert stat.S_IMODE(landing.stat().st_mode) == 0o444
    assert stat.S_IMODE(outside.stat().st_mode) == 0o640
    assert _files(paths.inbox) == []


def test_names_that_are_not_utf8_are_journalled_not_fatal(
    engine: Engine, paths: StoragePaths
) -> None:
    """A name with bytes that are not UTF-8 (a Latin-1 upload tool, say) must not fail the scan
    for every tenant: it is journalled with the bytes escaped, accepted or rejected as usual."""
    inbox = os.fsencode(paths.inbox)
    accepted = os.path.join(inbox, b"acme", b"caf\xe9.csv")
    rejected = os.path.join(inbox, b"acme", b"notes\xff.txt")
    _drop(Path(os.fsdecode(accepted)), _products_csv())
    _drop(Path(os.fsdecode(rejected)), b"hello")

    scan = _scan(engine, paths)

    assert (len(scan.registered), len(scan.rejected), scan.errors) == (1, 1, [])
    names = {row.original_name: row.status for row in _journal(engine)}
    assert names == {"caf\\xe9.csv": "received", "notes\\xff.txt": "rejected"}
    assert _files(paths.inbox) == []
