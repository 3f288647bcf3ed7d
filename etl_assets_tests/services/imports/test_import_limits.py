"""Bombs, limits and parsing edges through `import_upload`, on real SQLite and PostgreSQL.

Bad input is `rejected` with a clear journal message and nothing written, never `failed`
(which means the infrastructure broke, and retries the step). Limits are tested small.
"""

import gzip
import os

import pandas as pd
import pytest

from etl_assets.samples import products_frame, sales_frame, write_csv
from etl_assets.services.imports.importer import ImportSettings
from etl_assets.warehouse.schema import products, sales
from etl_assets_tests.services.imports.importing import (
    REJECTS_HEADER,
    read_rejects,
    rows_of,
    run_import,
    snapshot,
)
from etl_assets_tests.services.imports.upload_files import PRODUCT_HEADER, XLSX_ROWS, handmade_xlsx

SALES_HEADER = "transaction_id,sold_at,sku,quantity,unit_price,customer_id"


def gzipped(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(text.encode()))
    return path


def plain(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def rows(count):
    return "".join(f"S{i},Product {i},c,b,1.00,1\n" for i in range(count))


def random_rows(count):
    """Rows that do not compress much, so a cut in the .gz falls after the first 64 KiB."""
    return "".join(f"S{i},{os.urandom(8).hex()},c,b,1.00,1\n" for i in range(count))


# name: (file name, how to write it, settings, what the journal message says)
REJECTED = {
    "line-too-long": (
        "products.csv.gz",
        lambda p: gzipped(p, f"{PRODUCT_HEADER}\nA1,{'x' * 5000},c,b,1,1\n"),
        ImportSettings(max_row_size=1000),
        "line 2 is longer than 1,000 characters",
    ),
    "too-large-decompressed": (
        "products.csv.gz",
        lambda p: gzipped(p, f"{PRODUCT_HEADER}\n{rows(2000)}"),
        ImportSettings(max_upload_bytes=10_000),
        "more than 10,000 bytes (after decompression)",
    ),
    "header-longer-than-64-KiB": (
        "products.csv",
        lambda p: plain(
            p,
            f"{PRODUCT_HEADER},{','.join(f'x{i}' for i in range(20_000))}\nA,n,c,b,1,1\n".encode(),
        ),
        ImportSettings(),
        "the header row is longer than 64 KiB",
    ),
    "nul-after-the-sample": (
        "products.csv",
        lambda p: plain(p, f"{PRODUCT_HEADER}\n{rows(3000)}".encode() + b"Z,ba\x00d,c,b,1,1\n"),
        ImportSettings(),
        "NUL character on line 3002",
    ),
    "truncated-gzip": (
        "products.csv.gz",
        lambda p: plain(
            p, gzip.compress(f"{PRODUCT_HEADER}\n{random_rows(9000)}".encode())[:100_000]
        ),
        ImportSettings(),
        "unreadable: damaged gzip data",
    ),
    "xlsx-declaring-the-whole-grid": (
        "products.xlsx",
        lambda p: handmade_xlsx(p, XLSX_ROWS, dimension="A1:XFD1048576"),
        ImportSettings(),
        "the sheet declares 17,179,869,184 cells (A1:XFD1048576)",
    ),
    "xlsx-cell-too-large": (
        "products.xlsx",
        lambda p: handmade_xlsx(p, [*XLSX_ROWS, ["A3", "y" * 5000, "c", "b", 1, 1]]),
        ImportSettings(max_row_size=1000),
        "larger than 1,000 bytes",
    ),
}


@pytest.mark.parametrize("case", list(REJECTED))
def test_bad_input_rejects_the_upload_with_a_clear_message(engine, paths, case):
    name, make, settings, reason = REJECTED[case]
    (paths.landing / "acme").mkdir(parents=True, exist_ok=True)
    path = make(paths.landing / "acme" / name)
    before = snapshot(engine)
    result, row = run_import(engine, paths, path, settings=settings)

    assert (result.status, row.status) == ("rejected", "rejected")
    assert row.message.startswith("rejected whole upload: ")
    assert reason in row.message
    assert (row.rows_imported, row.rows_updated) == (0, 0)
    assert result.rejects_path is None
    assert not paths.rejects_file("acme", row.upload_id).exists()
    assert snapshot(engine) == before
    # The landed bytes stay where they were, for a person to look at.
    assert path.exists()


def test_excel_unicode_text_imports(engine, paths):
    """Excel's "Unicode text": UTF-16 with a BOM, tab-separated, CRLF."""
    frame = products_frame(5, seed=1).assign(name=["Café", "Jamón", "Ñandú", "Crème", "Öl"])
    text = frame.to_csv(sep="\t", index=False, lineterminator="\r\n")
    path = plain(paths.landing / "acme" / "products.csv", text.encode("utf-16"))
    result, row = run_import(engine, paths, path)

    assert (result.status, row.status) == ("completed", "completed")
    assert (result.encoding, result.delimiter) == ("utf-16", "\t")
    assert (row.rows_read, row.rows_imported) == (5, 5)
    assert [r["name"] for r in rows_of(engine, products)] == frame["name"].tolist()


def test_rejects_file_is_capped_and_the_counts_stay_exact(engine, paths):
    frame = sales_frame(100, seed=2).astype({"quantity": object})
    frame.loc[10:39, "quantity"] = 0
    path = write_csv(frame, paths.landing / "acme" / "sales.csv")
    settings = ImportSettings(max_invalid_fraction=0.5, max_rejects_written=5)
    result, row = run_import(engine, paths, path, kind="sales", settings=settings)

    assert (result.status, row.status) == ("completed", "completed")
    assert (row.rows_read, row.rows_imported, row.rows_rejected) == (100, 70, 30)
    rejects = read_rejects(paths.rejects_file("acme", row.upload_id))
    assert rejects[0] == REJECTS_HEADER
    assert [r[0] for r in rejects[1:]] == ["12", "13", "14", "15", "16"]
    assert "most common problem: quantity must not be 0 (30 rows)" in row.message
    assert "rejects file truncated to 5 of 30 problems" in row.message
    assert len(result.reject_sample) == 5


def test_flood_of_duplicates_is_counted_exactly_and_written_up_to_the_cap(engine, paths):
    """A tiny .csv.gz of one row repeated: every repeat counted, 10 written."""
    line = "T1,2025-03-04T10:00:00Z,S1,1,1.00,C1\n"
    path = gzipped(paths.landing / "acme" / "sales.csv.gz", SALES_HEADER + "\n" + line * 3000)
    settings = ImportSettings(chunk_rows=1000, max_rejects_written=10)
    result, row = run_import(engine, paths, path, kind="sales", settings=settings)

    assert (result.status, row.status) == ("rejected", "rejected")
    assert (row.rows_read, row.rows_rejected) == (3000, 2999)
    assert "most common problem: transaction_id duplicate of row 2 (2999 rows)" in row.message
    assert "rejects file truncated to 10 of 2,999 problems" in row.message
    rejects = read_rejects(paths.rejects_file("acme", row.upload_id))
    assert rejects[1:] == [
        [str(n), "transaction_id", "T1", "duplicate of row 2"] for n in range(3, 13)
    ]
    assert rows_of(engine, sales) == []


def test_invalid_rows_come_first_and_duplicates_fill_the_rest_of_the_cap(engine, paths):
    frame = products_frame(40, seed=3).astype({"stock_quantity": object})
    frame.loc[[5, 6], "stock_quantity"] = -1
    repeats = pd.concat([frame.loc[[1]]] * 3 + [frame.loc[[2]]] * 2, ignore_index=True)
    path = write_csv(pd.concat([frame, repeats]), paths.landing / "acme" / "products.csv")
    settings = ImportSettings(max_invalid_fraction=0.5, max_rejects_written=4)
    result, row = run_import(engine, paths, path, settings=settings)

    assert (result.status, row.status) == ("completed", "completed")
    assert (row.rows_read, row.rows_imported, row.rows_rejected) == (45, 38, 7)
    rejects = read_rejects(paths.rejects_file("acme", row.upload_id))
    assert [(r[0], r[3]) for r in rejects[1:]] == [
        ("7", "must be >= 0"),
        ("8", "must be >= 0"),
        ("42", "duplicate of row 3"),
        ("43", "duplicate of row 3"),
    ]
    assert "most common problem: sku duplicate of row 3 (3 rows)" in row.message
    assert "rejects file truncated to 4 of 7 problems" in row.message
    assert len(rows_of(engine, products)) == 38
