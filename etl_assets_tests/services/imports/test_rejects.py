"""Rejected uploads and rejected rows through `import_upload`: structural errors, the rejects
file, duplicate keys and the invalid-fraction threshold, on real SQLite and PostgreSQL."""

import pandas as pd
import pytest

from etl_assets.samples import PRODUCT_COLUMNS, products_frame, sales_frame, write_csv
from etl_assets.services.imports.companies import CompanyOptions
from etl_assets.services.imports.importer import ImportSettings
from etl_assets.warehouse.schema import TABLES, products, sales
from etl_assets_tests.services.imports.importing import (
    DEFAULTS,
    REJECTS_HEADER,
    count,
    money,
    read_rejects,
    rows_of,
    run_import,
    snapshot,
    write_text,
)

# --- bad inputs: whole upload rejected, nothing written --------------------------------------


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
