"""`import_upload` end to end on real files, against real SQLite and real PostgreSQL."""

import csv
import datetime as dt
import decimal
import hashlib
import json
import logging
import queue
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from zoneinfo import ZoneInfo

import openpyxl
import pandas as pd
import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError

from etl_assets.samples import (
    PRODUCT_COLUMNS,
    products_frame,
    sales_frame,
    write_csv,
    write_xlsx,
)
from etl_assets.services.imports import journal
from etl_assets.services.imports.companies import CompanyOptions
from etl_assets.services.imports.importer import ImportSettings, import_upload
from etl_assets.warehouse.schema import TABLES, products, sales

LOG = logging.getLogger("etl_assets_tests.importer")
DEFAULTS = CompanyOptions()
REJECTS_HEADER = ["row", "column", "value", "reason"]


def register(engine, path, company, kind):
    """Journal an upload as `received`, the way the registration service does."""
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    upload_id = f"{company}.{sha256[:16]}.{uuid.uuid4().hex[:6]}"
    with engine.begin() as conn:
        journal.record(conn, received(upload_id, company, path.name, sha256, kind))
    assert journal_row(engine, upload_id).status == "received"
    return upload_id


def received(upload_id, company, name, sha256, kind):
    return journal.UploadRecord(
        upload_id=upload_id,
        company=company,
        original_name=name,
        sha256=sha256,
        kind=kind,
        source=f"tester: inbox/{company}/{name}",
        status="received",
        received_at=journal.now_utc(),
        message=f"registered {name}",
    )


def run_import(
    engine,
    paths,
    path,
    *,
    company="acme",
    kind="products",
    options=DEFAULTS,
    settings=None,
    upload_id=None,
):
    """Register (unless `upload_id` is given, i.e. a replay) and import; return result and row."""
    upload_id = upload_id or register(engine, path, company, kind)
    result = import_upload(
        engine,
        path,
        upload_id=upload_id,
        company=company,
        kind=kind,
        options=options,
        rejects_path=paths.rejects_file(company, upload_id),
        settings=settings or ImportSettings(),
        run_id=f"run-{uuid.uuid4().hex[:8]}",
        log=LOG,
    )
    return result, journal_row(engine, upload_id)


def journal_row(engine, upload_id):
    with engine.connect() as conn:
        return journal.get(conn, upload_id)


def snapshot(engine):
    """Every row of products and sales, every column, in key order."""
    with engine.connect() as conn:
        return {
            name: [
                tuple(r) for r in conn.execute(select(table).order_by(*table.primary_key.columns))
            ]
            for name, table in TABLES.items()
        }


def rows_of(engine, table, company=None):
    query = select(table)
    if company is not None:
        query = query.where(table.c.company == company)
    with engine.connect() as conn:
        key = table.primary_key.columns
        return [r._asdict() for r in conn.execute(query.order_by(*key))]


def count(engine, table):
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def read_rejects(path):
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.reader(stream))


def money(value):
    return decimal.Decimal(str(value)).quantize(decimal.Decimal("0.01"))


@pytest.fixture
def seeded(engine, paths):
    """A warehouse with products and sales of two companies already in it."""
    for company in ("acme", "globex"):
        path = write_csv(products_frame(8, seed=11), paths.landing / company / "seed-p.csv")
        assert run_import(engine, paths, path, company=company)[0].status == "completed"
        path = write_csv(sales_frame(12, seed=12, skus=8), paths.landing / company / "seed-s.csv")
        assert run_import(engine, paths, path, company=company, kind="sales")[0].status == (
            "completed"
        )
    before = snapshot(engine)
    assert len(before["products"]) == 16
    assert len(before["sales"]) == 24
    return before


def test_journal_record_says_whether_it_inserted(engine):
    entry = received("acme.0123456789abcdef", "acme", "products.csv", "0" * 64, "products")
    with engine.begin() as conn:
        assert journal.record(conn, entry) is True
    with engine.begin() as conn:
        assert journal.record(conn, entry) is False
    assert journal_row(engine, entry.upload_id) == entry


# --- a good import ---------------------------------------------------------------------------


def test_products_import_writes_every_column_and_journals(engine, paths):
    frame = products_frame(25, seed=1)
    path = write_csv(frame, paths.landing / "acme" / "products.csv")
    result, row = run_import(engine, paths, path)

    assert result.status == "completed"
    assert (result.rows_read, result.rows_imported, result.rows_updated) == (25, 25, 0)
    assert result.rows_rejected == 0
    assert result.rejects_path is None
    assert not paths.rejects_file("acme", row.upload_id).exists()
    assert row.status == "completed"
    assert (row.rows_read, row.rows_imported, row.rows_updated, row.rows_rejected) == (
        25,
        25,
        0,
        0,
    )
    assert row.run_id.startswith("run-")
    assert row.started_at <= row.finished_at
    assert row.message == result.message
    assert row.message.startswith("imported 25, updated 0, unchanged 0, rejected 0")

    stored = rows_of(engine, products)
    assert [r["sku"] for r in stored] == sorted(frame["sku"])
    by_sku = {r["sku"]: r for r in stored}
    for record in frame.to_dict("records"):
        got = by_sku[record["sku"]]
        assert got["company"] == "acme"
        assert got["name"] == record["name"]
        assert got["category"] == record["category"]
        assert got["brand"] == (record["brand"] or None)
        assert got["unit_price"] == money(record["unit_price"])
        assert got["stock_quantity"] == record["stock_quantity"]
        assert got["upload_id"] == row.upload_id
        assert got["updated_at"].tzinfo is not None


def test_sales_import_stores_utc_timestamps(engine, paths):
    frame = sales_frame(30, seed=2, skus=10)
    frame.loc[0, "sold_at"] = "2025-06-01T12:00:00+02:00"
    frame.loc[1, "sold_at"] = "2025-06-01"
    path = write_csv(frame, paths.landing / "acme" / "sales.csv")
    result, row = run_import(engine, paths, path, kind="sales")
    assert (result.status, result.rows_imported, row.status) == ("completed", 30, "completed")

    by_id = {r["transaction_id"]: r for r in rows_of(engine, sales)}
    assert len(by_id) == 30
    first = by_id[frame.loc[0, "transaction_id"]]
    assert first["sold_at"] == dt.datetime(2025, 6, 1, 10, tzinfo=dt.UTC)
    assert by_id[frame.loc[1, "transaction_id"]]["sold_at"] == dt.datetime(
        2025, 6, 1, tzinfo=dt.UTC
    )
    for record in frame.iloc[2:].to_dict("records"):
        got = by_id[record["transaction_id"]]
        assert got["sold_at"] == dt.datetime.fromisoformat(record["sold_at"]).replace(tzinfo=dt.UTC)
        assert got["quantity"] == record["quantity"]
        assert got["unit_price"] == money(record["unit_price"])
        assert got["sku"] == record["sku"]
        assert got["customer_id"] == record["customer_id"]


def test_naive_sales_times_use_the_company_timezone(engine, paths):
    frame = sales_frame(3, seed=3, skus=3)
    frame["sold_at"] = ["2025-01-15T10:00:00", "2025-07-15T10:00:00", "2025-07-15"]
    path = write_csv(frame, paths.landing / "acme" / "sales.csv")
    result, _ = run_import(
        engine, paths, path, kind="sales", options=CompanyOptions(timezone="Europe/Madrid")
    )
    assert result.status == "completed"
    stored = [r["sold_at"] for r in rows_of(engine, sales)]
    madrid = ZoneInfo("Europe/Madrid")
    assert stored == [
        dt.datetime.fromisoformat(v).replace(tzinfo=madrid).astimezone(dt.UTC)
        for v in frame["sold_at"]
    ]


# --- bad inputs: whole upload rejected, nothing written --------------------------------------


def write_text(path, text, encoding="utf-8"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def products_csv_text(frame):
    return frame.to_csv(index=False)


STRUCTURAL_CASES = {
    "empty": (lambda p: write_text(p, ""), "products", DEFAULTS, "empty file"),
    "header-only": (
        lambda p: write_text(p, ",".join(PRODUCT_COLUMNS) + "\n"),
        "products",
        DEFAULTS,
        "no data rows",
    ),
    "missing-required": (
        lambda p: write_text(
            p, products_csv_text(products_frame(5).drop(columns=["unit_price", "name"]))
        ),
        "products",
        DEFAULTS,
        "missing required column(s): name, unit_price",
    ),
    "unknown-kind": (
        lambda p: write_text(p, "hello,world\n1,2\n"),
        "products",
        DEFAULTS,
        "header looks like no known kind, not products",
    ),
    "sales-as-products": (
        lambda p: write_csv(sales_frame(5), p),
        "products",
        DEFAULTS,
        "header looks like sales, not products",
    ),
    "products-as-sales": (
        lambda p: write_csv(products_frame(5), p),
        "sales",
        DEFAULTS,
        "header looks like products, not sales",
    ),
    "undecodable": (
        lambda p: write_text(
            p, products_csv_text(products_frame(5).assign(name="Café crème")), "cp1252"
        ),
        "products",
        CompanyOptions(encoding="utf-8"),
        "undecodable",
    ),
    "binary": (
        lambda p: p.write_bytes(bytes(range(256)) * 16),
        "products",
        DEFAULTS,
        "undecodable",
    ),
    "duplicate-column": (
        lambda p: write_text(p, "sku,SKU,name,unit_price,stock_quantity\nA,B,n,1,1\n"),
        "products",
        DEFAULTS,
        "appears twice",
    ),
}


@pytest.mark.parametrize("case", list(STRUCTURAL_CASES))
def test_structural_errors_reject_the_whole_upload(engine, paths, seeded, case):
    make, kind, options, reason = STRUCTURAL_CASES[case]
    path = paths.landing / "acme" / f"{case}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    make(path)
    result, row = run_import(engine, paths, path, kind=kind, options=options)

    assert result.status == "rejected"
    assert row.status == "rejected"
    assert reason in row.message
    assert row.message.startswith("rejected whole upload: ")
    assert (row.rows_imported, row.rows_updated) == (0, 0)
    assert row.finished_at is not None
    assert result.rejects_path is None
    assert not paths.rejects_file("acme", row.upload_id).exists()
    assert snapshot(engine) == seeded


def test_non_iso_dates_in_every_row_reject_the_upload(engine, paths, seeded):
    frame = sales_frame(30, seed=7, skus=8, start=1000)
    frame["sold_at"] = "03/04/2025"
    path = write_csv(frame, paths.landing / "acme" / "sales-us-dates.csv")
    result, row = run_import(engine, paths, path, kind="sales")

    assert (result.status, row.status) == ("rejected", "rejected")
    assert (row.rows_read, row.rows_rejected, row.rows_imported) == (30, 30, 0)
    assert "ISO 8601" in row.message
    assert "date_format" in row.message
    assert snapshot(engine) == seeded
    rejects = read_rejects(paths.rejects_file("acme", row.upload_id))
    assert rejects[0] == REJECTS_HEADER
    assert {tuple(r[1:3]) for r in rejects[1:]} == {("sold_at", "03/04/2025")}
    assert [int(r[0]) for r in rejects[1:]] == list(range(2, 32))


def test_configured_date_format_imports_non_iso_dates(engine, paths):
    frame = sales_frame(4, seed=7, skus=8)
    frame["sold_at"] = ["03/04/2025", "13/04/2025", "01/12/2025", "31/01/2025"]
    path = write_csv(frame, paths.landing / "acme" / "sales-eu-dates.csv")
    options = CompanyOptions(date_format="%d/%m/%Y")
    result, row = run_import(engine, paths, path, kind="sales", options=options)
    assert (result.status, row.rows_imported) == ("completed", 4)
    assert [r["sold_at"].date() for r in rows_of(engine, sales)] == [
        dt.datetime.strptime(v, "%d/%m/%Y").date() for v in frame["sold_at"]
    ]


# --- bad rows ---------------------------------------------------------------------------------


def test_rejects_file_lists_bad_rows_with_file_row_numbers(engine, paths):
    frame = sales_frame(60, seed=8, skus=10).astype({"quantity": object, "unit_price": object})
    bad = {5: ("quantity", 0, "must not be 0"), 17: ("unit_price", -3.5, "must be >= 0")}
    for index, (column, value, _) in bad.items():
        frame.loc[index, column] = value
    path = write_csv(frame, paths.landing / "acme" / "sales.csv")
    result, row = run_import(engine, paths, path, kind="sales")

    assert (result.status, row.status) == ("completed", "completed")
    assert (row.rows_read, row.rows_imported, row.rows_rejected) == (60, 58, 2)
    rejects_path = paths.rejects_file("acme", row.upload_id)
    assert result.rejects_path == str(rejects_path)
    rejects = read_rejects(rejects_path)
    assert rejects[0] == REJECTS_HEADER
    expected = [[str(i + 2), c, str(v), reason] for i, (c, v, reason) in bad.items()]
    assert rejects[1:] == expected
    # Row N is line N of the file (the header is row 1).
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, *_ in rejects[1:]:
        assert lines[int(number) - 1].startswith(frame.loc[int(number) - 2, "transaction_id"])
    stored = {r["transaction_id"] for r in rows_of(engine, sales)}
    assert stored == set(frame["transaction_id"]) - {frame.loc[i, "transaction_id"] for i in bad}
    assert [(e.row, e.column) for e in result.reject_sample] == [
        (i + 2, c) for i, (c, _, _) in bad.items()
    ]


@pytest.mark.parametrize("chunk_rows", [100_000, 3])
def test_duplicate_keys_keep_the_first_and_reject_later_ones(engine, paths, chunk_rows):
    """With 3-row chunks the duplicates are in different chunks from their first row."""
    frame = products_frame(40, seed=9)
    first, again = frame.loc[4].copy(), frame.loc[4].copy()
    again["name"], again["unit_price"] = "Later copy", 999.99
    invalid_again = frame.loc[10].copy()
    invalid_again["stock_quantity"] = -1
    frame = pd.concat([frame, pd.DataFrame([again, invalid_again])], ignore_index=True)
    path = write_csv(frame, paths.landing / "acme" / "products-dups.csv")
    settings = ImportSettings(chunk_rows=chunk_rows, max_invalid_fraction=0.05)
    result, row = run_import(engine, paths, path, settings=settings)

    assert (result.status, row.status) == ("completed", "completed")
    # The invalid repeat counts once although it has two problems.
    assert (row.rows_read, row.rows_imported, row.rows_rejected) == (42, 40, 2)
    assert count(engine, products) == 40
    kept = next(r for r in rows_of(engine, products) if r["sku"] == first["sku"])
    assert (kept["name"], kept["unit_price"]) == (first["name"], money(first["unit_price"]))
    rejects = read_rejects(paths.rejects_file("acme", row.upload_id))
    assert rejects[0] == REJECTS_HEADER
    assert ["42", "sku", first["sku"], "duplicate of row 6"] in rejects
    assert ["43", "sku", frame.loc[10, "sku"], "duplicate of row 12"] in rejects
    assert ["43", "stock_quantity", "-1", "must be >= 0"] in rejects
    assert len(rejects) == 4


def test_duplicate_transaction_ids_across_chunks(engine, paths):
    frame = sales_frame(30, seed=10, skus=5)
    frame.loc[25, "transaction_id"] = frame.loc[1, "transaction_id"]
    path = write_csv(frame, paths.landing / "acme" / "sales-dups.csv")
    settings = ImportSettings(chunk_rows=4, max_invalid_fraction=0.05)
    result, row = run_import(engine, paths, path, kind="sales", settings=settings)
    assert (result.status, row.rows_imported, row.rows_rejected) == ("completed", 29, 1)
    rejects = read_rejects(paths.rejects_file("acme", row.upload_id))
    assert rejects == [
        REJECTS_HEADER,
        ["27", "transaction_id", frame.loc[1, "transaction_id"], "duplicate of row 3"],
    ]
    stored = next(
        r for r in rows_of(engine, sales) if r["transaction_id"] == frame.loc[1, "transaction_id"]
    )
    assert stored["quantity"] == frame.loc[1, "quantity"]


@pytest.mark.parametrize(
    ("kind", "column", "value", "reason"),
    [
        ("sales", "quantity", 0, "must not be 0"),
        ("sales", "unit_price", -1, "must be >= 0"),
        ("products", "unit_price", -0.5, "must be >= 0"),
        ("products", "stock_quantity", -2, "must be >= 0"),
    ],
)
def test_invalid_value_rejects_the_row_only(engine, paths, kind, column, value, reason):
    frame = products_frame(40, seed=4) if kind == "products" else sales_frame(40, seed=4)
    frame = frame.astype({column: object})
    frame.loc[7, column] = value
    path = write_csv(frame, paths.landing / "acme" / f"{kind}.csv")
    result, row = run_import(engine, paths, path, kind=kind)
    assert (result.status, row.status) == ("completed", "completed")
    assert (row.rows_read, row.rows_imported, row.rows_rejected) == (40, 39, 1)
    assert f"most common problem: {column} {reason} (1 rows)" in row.message
    rejects = read_rejects(paths.rejects_file("acme", row.upload_id))
    assert rejects == [REJECTS_HEADER, ["9", column, str(value), reason]]
    key = "sku" if kind == "products" else "transaction_id"
    table = TABLES[kind]
    assert {r[key] for r in rows_of(engine, table)} == set(frame[key]) - {frame.loc[7, key]}


def test_chunk_of_rows_without_keys_is_rejected_not_a_crash(engine, paths):
    """The second chunk has no usable key at all: its rows are invalid rows like any other."""
    frame = products_frame(12, seed=31).astype({"sku": object})
    frame.loc[4:7, "sku"] = ""
    path = write_csv(frame, paths.landing / "acme" / "no-keys.csv")
    settings = ImportSettings(chunk_rows=4, max_invalid_fraction=0.5)
    result, row = run_import(engine, paths, path, settings=settings)
    assert (result.status, row.status) == ("completed", "completed")
    assert (row.rows_read, row.rows_imported, row.rows_rejected) == (12, 8, 4)
    rejects = read_rejects(paths.rejects_file("acme", row.upload_id))
    assert rejects[1:] == [[str(n), "sku", "", "required value is missing"] for n in range(6, 10)]


def test_negative_quantity_is_a_return_and_imported(engine, paths):
    frame = sales_frame(5, seed=5, skus=5)
    frame["quantity"] = [-1, 2, -3, 4, -5]
    path = write_csv(frame, paths.landing / "acme" / "sales-returns.csv")
    result, _ = run_import(engine, paths, path, kind="sales")
    assert (result.status, result.rows_imported, result.rows_rejected) == ("completed", 5, 0)
    stored = {r["transaction_id"]: r["quantity"] for r in rows_of(engine, sales)}
    assert stored == dict(zip(frame["transaction_id"], frame["quantity"], strict=True))


def bad_rows_frame(rows, bad):
    frame = products_frame(rows, seed=6).astype({"unit_price": object})
    frame.loc[list(range(bad)), "unit_price"] = "free"
    return frame


def test_too_many_invalid_rows_reject_the_upload_and_keep_the_rejects(engine, paths, seeded):
    settings = ImportSettings(max_invalid_fraction=0.05)
    frame = bad_rows_frame(40, 3)
    assert settings.max_invalid_fraction < 3 / 40
    path = write_csv(frame, paths.landing / "acme" / "too-many.csv")
    result, row = run_import(engine, paths, path, settings=settings)

    assert (result.status, row.status) == ("rejected", "rejected")
    assert (row.rows_read, row.rows_rejected, row.rows_imported, row.rows_updated) == (40, 3, 0, 0)
    assert row.message.startswith("rejected whole upload: 3 of 40 rows invalid")
    assert "nothing imported" in row.message
    assert snapshot(engine) == seeded
    rejects_path = paths.rejects_file("acme", row.upload_id)
    assert result.rejects_path == str(rejects_path)
    assert read_rejects(rejects_path) == [
        REJECTS_HEADER,
        ["2", "unit_price", "free", "not a number"],
        ["3", "unit_price", "free", "not a number"],
        ["4", "unit_price", "free", "not a number"],
    ]
    # No partial rejects files are left behind.
    assert [p.name for p in rejects_path.parent.iterdir()] == [rejects_path.name]


def test_exactly_at_the_threshold_is_imported(engine, paths):
    settings = ImportSettings(max_invalid_fraction=0.05)
    frame = bad_rows_frame(40, 2)
    assert settings.max_invalid_fraction == 2 / 40
    path = write_csv(frame, paths.landing / "acme" / "at-threshold.csv")
    result, row = run_import(engine, paths, path, settings=settings)
    assert (result.status, row.status) == ("completed", "completed")
    assert (row.rows_read, row.rows_rejected, row.rows_imported) == (40, 2, 38)
    assert len(read_rejects(paths.rejects_file("acme", row.upload_id))) == 3
    assert {r["sku"] for r in rows_of(engine, products)} == set(frame["sku"].iloc[2:])


@pytest.mark.parametrize("fraction", [0.0, 0.5, 1.0])
def test_max_invalid_fraction_is_honoured(engine, paths, fraction):
    frame = bad_rows_frame(10, 5)
    path = write_csv(frame, paths.landing / "acme" / "half-bad.csv")
    result, _ = run_import(
        engine, paths, path, settings=ImportSettings(max_invalid_fraction=fraction)
    )
    expected = "completed" if fraction >= 5 / 10 else "rejected"
    assert result.status == expected
    assert count(engine, products) == (5 if expected == "completed" else 0)


# --- idempotency ------------------------------------------------------------------------------


def test_same_upload_imported_twice_changes_nothing(engine, paths):
    path = write_csv(products_frame(30, seed=13), paths.landing / "acme" / "products.csv")
    first, row = run_import(engine, paths, path)
    assert (first.rows_imported, first.rows_updated) == (30, 0)
    before = snapshot(engine)

    again, row_again = run_import(engine, paths, path, upload_id=row.upload_id)
    assert (again.status, again.rows_read, again.rows_imported, again.rows_updated) == (
        "completed",
        30,
        0,
        0,
    )
    assert again.rows_unchanged == 30
    assert (row_again.rows_imported, row_again.rows_updated) == (0, 0)
    assert snapshot(engine) == before


@pytest.mark.parametrize("kind", ["products", "sales"])
def test_same_rows_in_another_file_change_nothing(engine, paths, kind):
    """A re-export with another name, order and compression: not a single row is touched."""
    frame = products_frame(30, seed=14) if kind == "products" else sales_frame(30, seed=14)
    path = write_csv(frame, paths.landing / "acme" / f"{kind}.csv")
    run_import(engine, paths, path, kind=kind)
    before = snapshot(engine)

    shuffled = frame.sample(frac=1, random_state=1)
    other = write_csv(shuffled, paths.landing / "acme" / f"{kind}-again.csv.gz")
    result, row = run_import(engine, paths, other, kind=kind)
    assert (result.status, result.rows_imported, result.rows_updated) == ("completed", 0, 0)
    assert row.message.startswith("imported 0, updated 0, unchanged 30, rejected 0")
    assert snapshot(engine) == before


def test_updated_file_counts_changed_and_new_rows_exactly(engine, paths):
    frame = products_frame(30, seed=15)
    path = write_csv(frame, paths.landing / "acme" / "products.csv")
    _, first_row = run_import(engine, paths, path)
    before = {r["sku"]: r for r in rows_of(engine, products)}

    changed = frame.copy()
    price_changed = [0, 3, 9, 20]
    changed.loc[price_changed, "unit_price"] += 1.25
    changed.loc[12, "stock_quantity"] += 1
    changed.loc[13, "brand"] = "" if changed.loc[13, "brand"] else "NewBrand"
    new = products_frame(36, seed=16).iloc[30:]
    updated_file = pd.concat([changed, new], ignore_index=True)
    path2 = write_csv(updated_file, paths.landing / "acme" / "products-v2.csv")
    result, row = run_import(engine, paths, path2)

    touched = {frame.loc[i, "sku"] for i in [*price_changed, 12, 13]}
    assert (result.rows_updated, result.rows_imported) == (len(touched), len(new))
    assert (row.rows_updated, row.rows_imported) == (len(touched), len(new))
    assert result.rows_unchanged == 30 - len(touched)
    assert count(engine, products) == 30 + len(new)
    after = {r["sku"]: r for r in rows_of(engine, products)}
    for sku, stored in after.items():
        if sku in touched or sku in set(new["sku"]):
            assert stored["upload_id"] == row.upload_id
        else:
            assert stored == before[sku]
            assert stored["upload_id"] == first_row.upload_id
    for i in price_changed:
        assert after[frame.loc[i, "sku"]]["unit_price"] == money(changed.loc[i, "unit_price"])


def test_updated_sales_file(engine, paths):
    frame = sales_frame(20, seed=17, skus=5)
    run_import(engine, paths, write_csv(frame, paths.landing / "acme" / "s1.csv"), kind="sales")
    changed = frame.copy()
    changed.loc[[1, 2], "quantity"] = changed.loc[[1, 2], "quantity"] + 10
    changed.loc[5, "sold_at"] = "2024-12-31T23:59:59"
    new = sales_frame(5, seed=18, skus=5, start=20)
    path = write_csv(pd.concat([changed, new]), paths.landing / "acme" / "s2.csv")
    result, _ = run_import(engine, paths, path, kind="sales")
    assert (result.rows_updated, result.rows_imported) == (3, 5)
    assert count(engine, sales) == 25


# --- tenant isolation -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["products", "sales"])
def test_companies_with_the_same_keys_keep_separate_rows(engine, paths, kind):
    make = products_frame if kind == "products" else sales_frame
    frame_a = make(20, seed=19)
    frame_b = make(20, seed=20)
    key = "sku" if kind == "products" else "transaction_id"
    assert list(frame_a[key]) == list(frame_b[key])
    table = TABLES[kind]

    run_import(
        engine, paths, write_csv(frame_a, paths.landing / "a" / "f.csv"), company="a", kind=kind
    )
    a_before = rows_of(engine, table, "a")
    result, _ = run_import(
        engine, paths, write_csv(frame_b, paths.landing / "b" / "f.csv"), company="b", kind=kind
    )
    assert (result.rows_imported, result.rows_updated) == (20, 0)
    assert rows_of(engine, table, "a") == a_before
    assert count(engine, table) == 40

    changed = frame_b.copy()
    changed["unit_price"] = changed["unit_price"] + 1
    result, _ = run_import(
        engine, paths, write_csv(changed, paths.landing / "b" / "f2.csv"), company="b", kind=kind
    )
    assert (result.rows_imported, result.rows_updated) == (0, 20)
    assert rows_of(engine, table, "a") == a_before
    b_prices = [r["unit_price"] for r in rows_of(engine, table, "b")]
    expected = changed.sort_values(key)["unit_price"].map(money).tolist()
    assert b_prices == expected


def test_orphan_skus_are_counted_per_company(engine, paths):
    catalogue = products_frame(10, seed=21)
    run_import(engine, paths, write_csv(catalogue, paths.landing / "a" / "p.csv"), company="a")
    run_import(
        engine,
        paths,
        write_csv(products_frame(30, seed=21), paths.landing / "b" / "p.csv"),
        company="b",
    )
    frame = sales_frame(50, seed=22, skus=25)
    expected = sorted(set(frame["sku"]) - set(catalogue["sku"]))
    assert expected
    path = write_csv(frame, paths.landing / "a" / "sales.csv")
    result, row = run_import(engine, paths, path, company="a", kind="sales")
    assert result.status == "completed"
    # Company b has every one of these SKUs: it must not hide a's orphans.
    assert result.orphan_skus == len(expected)
    assert result.orphan_sample == expected[:10]
    assert f"{len(expected)} SKU(s) not in products yet" in row.message
    assert count(engine, sales) == 50

    other = write_csv(sales_frame(50, seed=22, skus=25), paths.landing / "b" / "sales.csv")
    result_b, _ = run_import(engine, paths, other, company="b", kind="sales")
    assert result_b.orphan_skus == 0


# --- formats ----------------------------------------------------------------------------------


def test_csv_gz_upload(engine, paths):
    frame = sales_frame(40, seed=23)
    path = write_csv(frame, paths.landing / "acme" / "sales.csv.gz")
    result, row = run_import(engine, paths, path, kind="sales")
    assert (result.status, row.rows_imported) == ("completed", 40)
    assert {r["transaction_id"] for r in rows_of(engine, sales)} == set(frame["transaction_id"])


def test_xlsx_upload_with_typed_cells(engine, paths):
    frame = products_frame(15, seed=24)
    path = write_xlsx(frame, paths.landing / "acme" / "catalogue.xlsx")
    result, row = run_import(engine, paths, path)
    assert (result.status, row.rows_imported, result.encoding) == ("completed", 15, None)
    stored = {r["sku"]: r for r in rows_of(engine, products)}
    for record in frame.to_dict("records"):
        assert stored[record["sku"]]["unit_price"] == money(record["unit_price"])
        assert stored[record["sku"]]["stock_quantity"] == record["stock_quantity"]


def test_xlsx_sales_with_datetime_cells(engine, paths):
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.append(["Transaction ID", "Sold At", "SKU", "Quantity", "Unit Price", "Customer ID"])
    moments = [dt.datetime(2025, 1, 15, 10, 0), dt.datetime(2025, 7, 15, 10, 0, 30)]
    for i, moment in enumerate(moments):
        sheet.append([f"X{i}", moment, f"S{i}", i + 1, 2.5, None])
    path = paths.landing / "acme" / "sales.xlsx"
    path.parent.mkdir(parents=True, exist_ok=True)
    workbook.save(path)
    options = CompanyOptions(timezone="Europe/Madrid")
    result, _ = run_import(engine, paths, path, kind="sales", options=options)
    assert (result.status, result.rows_imported) == ("completed", 2)
    madrid = ZoneInfo("Europe/Madrid")
    assert [r["sold_at"] for r in rows_of(engine, sales)] == [
        m.replace(tzinfo=madrid).astimezone(dt.UTC) for m in moments
    ]


def test_cp1252_semicolons_and_decimal_commas(engine, paths):
    frame = products_frame(12, seed=25)
    frame["name"] = [f"Café crème nº{i}" for i in range(12)]
    frame["unit_price"] = frame["unit_price"] + 0.25
    path = paths.landing / "acme" / "productos.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, sep=";", decimal=",", encoding="cp1252")
    assert ";" in path.read_bytes().decode("cp1252").splitlines()[1]
    result, row = run_import(engine, paths, path)
    assert (result.status, row.rows_imported, row.rows_rejected) == ("completed", 12, 0)
    assert (result.encoding, result.delimiter) in {("cp1252", ";"), ("latin_1", ";")}
    stored = {r["sku"]: r for r in rows_of(engine, products)}
    for record in frame.to_dict("records"):
        assert stored[record["sku"]]["name"] == record["name"]
        assert stored[record["sku"]]["unit_price"] == money(record["unit_price"])


def test_company_aliases(engine, paths):
    frame = products_frame(6, seed=26).rename(columns={"sku": "Código", "name": "Nombre"})
    path = write_csv(frame, paths.landing / "acme" / "catalogo.csv")
    options = CompanyOptions(aliases={"Código": "sku", "Nombre": "name"})
    result, row = run_import(engine, paths, path, options=options)
    assert (result.status, row.rows_imported) == ("completed", 6)
    assert [r["sku"] for r in rows_of(engine, products)] == sorted(frame["Código"])
    assert [r["name"] for r in rows_of(engine, products)] == list(
        frame.sort_values("Código")["Nombre"]
    )

    # Without the alias the same file lacks its key column.
    result, row = run_import(engine, paths, path)
    assert result.status == "rejected"
    assert "missing required column(s): sku, name" in row.message


def test_extra_columns_are_ignored_and_reported(engine, paths):
    frame = products_frame(6, seed=27)
    frame.insert(0, "Colour", "red")
    frame["Weight (kg)"] = 1.5
    path = write_csv(frame, paths.landing / "acme" / "products.csv")
    result, row = run_import(engine, paths, path)
    assert (result.status, row.rows_imported) == ("completed", 6)
    assert result.extra_columns == ["Colour", "Weight (kg)"]
    assert "ignored extra columns: Colour, Weight (kg)" in row.message
    assert set(rows_of(engine, products)[0]) == {c.name for c in products.columns}


def test_header_spelling_variants(engine, paths):
    frame = sales_frame(5, seed=28).rename(
        columns={
            "transaction_id": "Transaction ID",
            "sold_at": "Sold-At",
            "unit_price": "UNIT PRICE",
        }
    )
    path = write_csv(frame, paths.landing / "acme" / "sales.csv")
    result, _ = run_import(engine, paths, path, kind="sales")
    assert (result.status, result.rows_imported) == ("completed", 5)


# --- failures and crashes ---------------------------------------------------------------------


def test_warehouse_error_marks_the_journal_failed_and_reraises(engine, paths):
    path = write_csv(products_frame(5, seed=29), paths.landing / "acme" / "products.csv")
    upload_id = register(engine, path, "acme", "products")
    products.drop(engine)
    with pytest.raises(DBAPIError) as info:
        run_import(engine, paths, path, upload_id=upload_id)
    row = journal_row(engine, upload_id)
    assert row.status == "failed"
    assert row.message.startswith(f"{type(info.value).__name__}: ")
    assert "products" in row.message
    assert row.finished_at is not None
    assert not paths.rejects_file("acme", upload_id).exists()
    assert count(engine, sales) == 0


def test_upload_missing_from_the_journal_is_an_error(engine, paths):
    path = write_csv(products_frame(3), paths.landing / "acme" / "products.csv")
    with pytest.raises(LookupError):
        run_import(engine, paths, path, upload_id="acme.not-journalled")
    assert count(engine, products) == 0


CRASH_CHILD = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from etl_assets.services.imports.companies import CompanyOptions
    from etl_assets.services.imports.importer import ImportSettings, import_upload
    from etl_assets.warehouse.schema import make_engine

    args = json.loads(sys.argv[1])

    class Log:
        def info(self, message):
            print(message, flush=True)
            if message.startswith("chunk 2:"):
                sys.stdin.readline()  # blocks until the parent kills us

    import_upload(
        make_engine(args["url"]),
        Path(args["path"]),
        upload_id=args["upload_id"],
        company="acme",
        kind=args["kind"],
        options=CompanyOptions(),
        rejects_path=Path(args["rejects"]),
        settings=ImportSettings(chunk_rows=args["chunk_rows"]),
        run_id="crashing-run",
        log=Log(),
    )
    print("finished", flush=True)
    """
)


def wait_for_line(lines, prefix, deadline):
    """Lines the child printed until one starts with `prefix`; fails at the deadline."""
    seen = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"child never printed {prefix!r}; it printed {seen}")
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            continue
        if line is None:
            pytest.fail(f"child exited before printing {prefix!r}; it printed {seen}")
        seen.append(line)
        if line.startswith(prefix):
            return seen


@pytest.mark.parametrize("kind", ["products", "sales"])
def test_killed_import_leaves_the_tables_unchanged(engine, paths, kind, seeded):
    key = "sku" if kind == "products" else "transaction_id"
    make = products_frame if kind == "products" else sales_frame
    # The seeded rows with other values, plus new rows: the import would update and insert.
    frame = make(30, seed=30)
    assert set(frame[key]) & {r[1] for r in seeded[kind]}
    path = write_csv(frame, paths.landing / "acme" / f"{kind}-crash.csv")
    upload_id = register(engine, path, "acme", kind)
    args = {
        "url": engine.url.render_as_string(hide_password=False),
        "path": str(path),
        "upload_id": upload_id,
        "kind": kind,
        "rejects": str(paths.rejects_file("acme", upload_id)),
        "chunk_rows": 5,
    }
    child = subprocess.Popen(
        [sys.executable, "-c", CRASH_CHILD, json.dumps(args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    lines = queue.Queue()

    def pump():
        for line in child.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        seen = wait_for_line(lines, "chunk 2:", time.monotonic() + 30)
        assert seen[-1].startswith("chunk 2: 10 rows read")
    finally:
        child.kill()
        child.wait(timeout=30)
        reader.join(timeout=30)
    assert child.returncode == -9

    assert snapshot(engine) == seeded
    row = journal_row(engine, upload_id)
    assert row.status == "processing"
    assert row.run_id == "crashing-run"
    assert row.finished_at is None

    # Replaying the crashed upload completes it normally.
    result, row = run_import(engine, paths, path, kind=kind, upload_id=upload_id)
    assert (result.status, row.status) == ("completed", "completed")
    existing = {r[1] for r in seeded[kind] if r[0] == "acme"}
    assert result.rows_imported == len(set(frame[key]) - existing)
    assert result.rows_imported + result.rows_updated + result.rows_unchanged == 30
    assert count(engine, TABLES[kind]) == len(seeded[kind]) + result.rows_imported
    others = [r for r in snapshot(engine)[kind] if r[0] != "acme"]
    assert others == [r for r in seeded[kind] if r[0] != "acme"]


SALES_HEADER = "transaction_id,sold_at,sku,quantity,unit_price,customer_id\n"


def test_days_touched_are_calendar_days_in_the_aggregate_timezone(engine, paths):
    """23:30 UTC on 1 March is 2 March in Madrid; the day list feeds daily_sales refreshes."""
    path = write_text(
        paths.data_dir / "s1.csv",
        SALES_HEADER + "T1,2025-03-01T23:30:00Z,A,1,1.00,\n"
        "T2,2025-03-05T10:00:00Z,A,1,1.00,\n"
        "T3,2025-03-05T11:00:00Z,A,0,1.00,\n",  # invalid (quantity 0): its day is not touched
    )
    madrid = ImportSettings(timezone="Europe/Madrid", max_invalid_fraction=0.5)

    result, _ = run_import(engine, paths, path, kind="sales", settings=madrid)

    assert result.days_touched == ["2025-03-02", "2025-03-05"]


def test_days_touched_include_the_old_day_of_a_moved_sale(engine, paths):
    first = write_text(paths.data_dir / "s1.csv", SALES_HEADER + "T1,2025-03-01T10:00:00Z,A,1,1,\n")
    run_import(engine, paths, first, kind="sales")
    moved = write_text(paths.data_dir / "s2.csv", SALES_HEADER + "T1,2025-03-09T10:00:00Z,A,1,1,\n")

    result, _ = run_import(engine, paths, moved, kind="sales")

    assert result.days_touched == ["2025-03-01", "2025-03-09"]


def test_products_touch_no_days(engine, paths):
    path = write_csv(products_frame(3), paths.data_dir / "p.csv")

    result, _ = run_import(engine, paths, path)

    assert result.days_touched == []
