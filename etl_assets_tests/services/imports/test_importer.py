"""`import_upload` end to end on real files, against real SQLite and real PostgreSQL: the journal
row, good imports and their counts, idempotency and tenant isolation."""

import datetime as dt
from zoneinfo import ZoneInfo

import pandas as pd
import pytest

from etl_assets.samples import products_frame, sales_frame, write_csv
from etl_assets.services.imports import journal
from etl_assets.services.imports.companies import CompanyOptions
from etl_assets.warehouse.schema import TABLES, products, sales
from etl_assets_tests.services.imports.importing import (
    count,
    journal_row,
    money,
    received,
    rows_of,
    run_import,
    snapshot,
)


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
