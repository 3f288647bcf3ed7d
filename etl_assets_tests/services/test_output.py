"""CSV cells a spreadsheet would run as formulas: the rule, and the rejects files it protects."""

import csv
import datetime as dt
import logging
from decimal import Decimal

import pytest
from sqlalchemy import Engine, select

from etl_assets.services.imports import journal
from etl_assets.services.imports.companies import CompanyOptions
from etl_assets.services.imports.importer import ImportSettings, import_upload
from etl_assets.services.output import csv_row
from etl_assets.services.storage import StoragePaths
from etl_assets.warehouse.schema import products


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("=1+1", "'=1+1"),
        ('=HYPERLINK("http://evil.example","x")', '\'=HYPERLINK("http://evil.example","x")'),
        ("=cmd|' /C calc'!A0", "'=cmd|' /C calc'!A0"),
        ("+1+1", "'+1+1"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("-", "'-"),
        ("'=1", "'=1"),
        # A plain number is read as that number, never run: left as it is.
        ("-3", "-3"),
        ("+3", "+3"),
        ("-1.50", "-1.50"),
        ("-1e5", "-1e5"),
        ("-.5", "-.5"),
        # Numeric and other typed values come from numeric columns: never text.
        (-3, -3),
        (Decimal("-1.50"), Decimal("-1.50")),
        (dt.date(2025, 3, 1), dt.date(2025, 3, 1)),
        (None, None),
        # Text that does not start a formula.
        ("Anvil = heavy", "Anvil = heavy"),
        (" =1", " =1"),
        ("", ""),
    ],
)
def test_csv_row_neutralises_what_a_spreadsheet_would_run(value: object, written: object) -> None:
    assert csv_row(["x", value]) == ["x", written]


def test_rejects_file_neutralises_raw_values(engine: Engine, paths: StoragePaths) -> None:
    source = paths.landing / "acme" / "products.csv"
    source.parent.mkdir(parents=True, exist_ok=True)
    with open(source, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["sku", "name", "category", "brand", "unit_price", "stock_quantity"])
        writer.writerow(["A1", "=HYPERLINK(1)", "tools", "", "9.99", "3"])
        writer.writerow(["A2", "Anvil", "tools", "", "9.99", "=1+1"])
        writer.writerow(["A3", "Anvil", "tools", "", "9.99", "@SUM(A1)"])
        writer.writerow(["A4", "Anvil", "tools", "", "9.99", "-3"])
        writer.writerow(["A5", "Anvil", "tools", "", "=2*3", "1"])
    upload_id = "acme.0123456789abcdef.000001"
    with engine.begin() as conn:
        journal.record(
            conn,
            journal.UploadRecord(
                upload_id=upload_id,
                company="acme",
                original_name=source.name,
                sha256="0" * 64,
                kind="products",
                source="test",
                status="received",
                received_at=journal.now_utc(),
            ),
        )
    rejects = paths.rejects_file("acme", upload_id)

    result = import_upload(
        engine,
        source,
        upload_id=upload_id,
        company="acme",
        kind="products",
        options=CompanyOptions(),
        rejects_path=rejects,
        settings=ImportSettings(max_invalid_fraction=0.9),
        run_id="run-1",
        log=logging.getLogger(__name__),
    )
    with open(rejects, newline="", encoding="utf-8") as stream:
        written = [row[:3] for row in csv.reader(stream)]
    with engine.connect() as conn:
        stored = conn.execute(select(products.c.name)).scalars().all()

    assert result.rows_rejected == 4
    assert written == [
        ["row", "column", "value"],
        ["3", "stock_quantity", "'=1+1"],
        ["4", "stock_quantity", "'@SUM(A1)"],
        # A raw `-3` is a plain number, which no spreadsheet runs: as the file had it.
        ["5", "stock_quantity", "-3"],
        ["6", "unit_price", "'=2*3"],
    ]
    # The warehouse keeps what the file held; only the CSV written for people is neutralised.
    assert stored == ["=HYPERLINK(1)"]
