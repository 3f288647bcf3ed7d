"""Exports: every dataset and format parsed back, tenant isolation, date ranges, the job."""

import csv
import datetime as dt
import json
import re
import xml.etree.ElementTree as ET
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
from sqlalchemy import Engine

from etl_assets.defs.calendar import Calendar
from etl_assets.defs.reports.jobs import build_export_job
from etl_assets.defs.resources import StorageResource, WarehouseResource
from etl_assets.services.output import atomic_open
from etl_assets.services.reports.exports import (
    DATASETS,
    FORMATS,
    ExportRequestError,
    export_dataset,
    export_request,
)
from etl_assets.services.storage import StoragePaths
from etl_assets.warehouse.schema import daily_sales, products, sales

TZ = "America/New_York"
NOW = dt.datetime(2025, 4, 1, 12, 30, 15, 250000, tzinfo=dt.UTC)
CENT = Decimal("0.01")


def _sales(company: str, price: str, customer: str | None) -> list[dict]:
    # Local times in TZ around the 10th..11th of March 2025 (DST starts on the 9th).
    times = [
        dt.datetime(2025, 3, 9, 23, 59, 59),
        dt.datetime(2025, 3, 10, 0, 0, 0),
        dt.datetime(2025, 3, 10, 22, 0),  # 02:00 UTC on the 11th
        dt.datetime(2025, 3, 11, 23, 59, 59),  # 03:59:59 UTC on the 12th
        dt.datetime(2025, 3, 12, 0, 0, 0),
    ]
    return [
        {
            "company": company,
            "transaction_id": f"t{n}",
            "sold_at": at.replace(tzinfo=ZoneInfo(TZ)),
            "sku": f"S{n % 2}",
            "quantity": -1 if n == 2 else n + 1,
            "unit_price": Decimal(price),
            "customer_id": customer if n % 2 else None,
            "upload_id": f"{company}-upload",
            "updated_at": NOW,
        }
        for n, at in enumerate(times)
    ]


def _products(company: str, name: str) -> list[dict]:
    return [
        {
            "company": company,
            "sku": f"S{n}",
            "name": f"{name} {n} <&> “quoted”",
            "category": "tools",
            "brand": None if n else "Brand",
            "unit_price": Decimal("5"),
            "stock_quantity": 10 * n,
            "upload_id": f"{company}-upload",
            "updated_at": NOW,
        }
        for n in range(3)
    ]


def _daily(company: str, revenue: str) -> list[dict]:
    return [
        {
            "company": company,
            "day": dt.date(2025, 3, 9) + dt.timedelta(days=n),
            "revenue": Decimal(revenue) * (n + 1),
            "units": n + 1,
            "transactions": n + 2,
            "returns": n % 2,
            "distinct_products": 1,
        }
        for n in range(4)
    ]


ACME = {
    "sales": _sales("acme", "19.99", "cust-7"),
    "products": _products("acme", "Widget"),
    "daily_sales": _daily("acme", "10.50"),
}
# The other tenant: identical keys, values that never occur in acme's rows.
GLOBEX = {
    "sales": _sales("globex", "977.31", "globex-secret"),
    "products": _products("globex", "Globex secret"),
    "daily_sales": _daily("globex", "977.31"),
}
TABLES = {"sales": sales, "products": products, "daily_sales": daily_sales}


@pytest.fixture
def loaded(engine: Engine) -> Engine:
    """Both companies' products, sales and daily_sales."""
    with engine.begin() as conn:
        for dataset, table in TABLES.items():
            conn.execute(table.insert(), ACME[dataset] + GLOBEX[dataset])
    return engine


def _as_text(value: object) -> str | None:
    """How a value is expected in an export: the exporters' conventions, applied to inputs."""
    if value is None:
        return None
    if isinstance(value, Decimal):
        return str(value.quantize(CENT))
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def _expected(dataset: str, rows: list[dict]) -> list[dict[str, str | None]]:
    order = DATASETS[dataset].order_by
    ordered = sorted(rows, key=lambda r: tuple(r[c] for c in order))
    columns = [c.name for c in TABLES[dataset].columns]
    return [{c: _as_text(row[c]) for c in columns} for row in ordered]


def _parse(path: Path, fmt: str) -> list[dict[str, str | None]]:
    """An export read back with a standard parser, values as text (None for NULL)."""
    if fmt == "csv":
        with open(path, newline="", encoding="utf-8") as stream:
            return [{k: v or None for k, v in row.items()} for row in csv.DictReader(stream)]
    if fmt == "json":
        records = json.loads(path.read_text(encoding="utf-8"))
        return [{k: None if v is None else str(v) for k, v in r.items()} for r in records]
    root = ET.parse(path).getroot()
    columns = [c.name for c in TABLES[root.get("dataset")].columns]
    return [{c: row.findtext(c) for c in columns} for row in root.iter("row")]


def _export(engine: Engine, tmp_path: Path, *args: str | None, batch_rows: int = 2):
    request = export_request(*args)
    return export_dataset(
        engine, request, tmp_path / request.file_name("test"), timezone=TZ, batch_rows=batch_rows
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_dataset_parses_back_to_the_inserted_rows(
    loaded: Engine, tmp_path: Path, fmt: str
) -> None:
    for dataset in DATASETS:
        result = _export(loaded, tmp_path, "acme", dataset, fmt)

        assert result.path == tmp_path / f"{dataset}_test.{fmt}"
        assert result.rows == len(ACME[dataset])
        assert result.bytes == result.path.stat().st_size
        assert _parse(result.path, fmt) == _expected(dataset, ACME[dataset])


def test_json_keeps_numbers_numbers_and_amounts_exact(loaded: Engine, tmp_path: Path) -> None:
    result = _export(loaded, tmp_path, "acme", "sales", "json")

    records = json.loads(result.path.read_text(encoding="utf-8"))
    assert [(r["quantity"], r["unit_price"], r["customer_id"]) for r in records] == [
        (s["quantity"], str(s["unit_price"]), s["customer_id"]) for s in ACME["sales"]
    ]


# Text a spreadsheet would run as a formula, as a customer's file may hold it.
FORMULAS = ['=HYPERLINK("http://evil.example","x")', "+1+1", "-2+3", "@SUM(A1)", "\t=1", "\r=1"]


def test_csv_neutralises_formulas_in_text_and_keeps_numbers(engine: Engine, tmp_path: Path) -> None:
    rows = [
        {**ACME["products"][0], "sku": f"F{n}", "name": text, "brand": text, "category": "-"}
        for n, text in enumerate(FORMULAS)
    ]
    # Negative numbers in numeric columns, and a text that is a plain negative number.
    rows.append(
        {**ACME["products"][0], "sku": "-3", "unit_price": Decimal("-1.50"), "stock_quantity": -3}
    )
    # A carriage return inside a cell must be quoted, or it starts a row with `=1+1`.
    rows.append({**ACME["products"][0], "sku": "CR", "name": "Anvil\r=1+1"})
    with engine.begin() as conn:
        conn.execute(products.insert(), rows)

    exported = {
        fmt: _parse(_export(engine, tmp_path, "acme", "products", fmt).path, fmt)
        for fmt in ("csv", "json")
    }
    with engine.connect() as conn:
        stored = {r.sku: r.name for r in conn.execute(products.select())}

    csv_rows = {r["sku"]: r for r in exported["csv"]}
    for n, text in enumerate(FORMULAS):
        assert (csv_rows[f"F{n}"]["name"], csv_rows[f"F{n}"]["brand"]) == (f"'{text}", f"'{text}")
        assert csv_rows[f"F{n}"]["category"] == "'-"
        # Only the CSV is for spreadsheets: the warehouse and the JSON keep the value.
        assert stored[f"F{n}"] == text
        assert [r["name"] for r in exported["json"] if r["sku"] == f"F{n}"] == [text]
    assert (csv_rows["-3"]["unit_price"], csv_rows["-3"]["stock_quantity"]) == ("-1.50", "-3")
    assert csv_rows["CR"]["name"] == "Anvil\r=1+1"
    assert len(exported["csv"]) == len(rows)


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_never_contains_another_companys_rows(
    loaded: Engine, tmp_path: Path, fmt: str
) -> None:
    for dataset in DATASETS:
        content = _export(loaded, tmp_path, "acme", dataset, fmt).path.read_text(encoding="utf-8")

        assert "globex" not in content
        assert "977.31" not in content
        assert "Globex secret" not in content


@pytest.mark.parametrize(
    ("dataset", "start", "end"),
    [
        ("sales", "2025-03-10", "2025-03-11"),
        ("sales", "2025-03-10", None),
        ("sales", None, "2025-03-10"),
        ("sales", "2025-03-11", "2025-03-11"),
        ("daily_sales", "2025-03-10", "2025-03-11"),
        ("daily_sales", None, "2025-03-09"),
    ],
)
def test_date_range_selects_local_days_inclusive(
    loaded: Engine, tmp_path: Path, dataset: str, start: str | None, end: str | None
) -> None:
    first = dt.date.fromisoformat(start) if start else dt.date.min
    last = dt.date.fromisoformat(end) if end else dt.date.max

    def local_day(row: dict) -> dt.date:
        return row["sold_at"].astimezone(ZoneInfo(TZ)).date() if "sold_at" in row else row["day"]

    wanted = [r for r in ACME[dataset] if first <= local_day(r) <= last]

    result = _export(loaded, tmp_path, "acme", dataset, "csv", start, end)

    assert 0 < result.rows < len(ACME[dataset])
    assert _parse(result.path, "csv") == _expected(dataset, wanted)


@pytest.mark.parametrize("fmt", FORMATS)
def test_company_without_rows_gives_an_empty_valid_file(
    engine: Engine, tmp_path: Path, fmt: str
) -> None:
    result = _export(engine, tmp_path, "acme", "sales", fmt)

    assert result.rows == 0
    assert _parse(result.path, fmt) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("Acme", "sales", "csv"), "invalid company 'Acme'"),
        (("../acme", "sales", "csv"), "invalid company '../acme'"),
        (("acme", "customers", "csv"), "unknown dataset 'customers': expected one of products"),
        (("acme", "sales", "parquet"), "unknown format 'parquet': expected one of csv, json, xml"),
        (("acme", "sales", "csv", "03/04/2025"), "start '03/04/2025' is not a date in the form"),
        (("acme", "sales", "csv", None, "2025-02-30"), "end '2025-02-30' is not a valid date"),
        (("acme", "sales", "csv", "2025-03-02", "2025-03-01"), "start 2025-03-02 is after end"),
        (("acme", "products", "csv", "2025-03-01"), "dataset 'products' has no date column"),
    ],
)
def test_invalid_requests_are_refused_with_a_clear_message(args: tuple, message: str) -> None:
    with pytest.raises(ExportRequestError, match="^" + re.escape(message)):
        export_request(*args)


def _write_then_fail(target: Path) -> None:
    with atomic_open(target) as stream:
        stream.write("half of the new")
        raise RuntimeError("disk gone")


def test_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out" / "sales.csv"
    with atomic_open(target) as stream:
        stream.write("old\n")

    with pytest.raises(RuntimeError, match="disk gone"):
        _write_then_fail(target)

    assert target.read_text() == "old\n"
    assert [p.name for p in target.parent.iterdir()] == ["sales.csv"]


def _run_export(resources: dict, config: dict) -> dg.ExecuteInProcessResult:
    job = build_export_job(Calendar(timezone=TZ))
    return job.execute_in_process(
        run_config={"ops": {"dataset_export": {"config": config}}},
        resources=resources,
        raise_on_error=False,
    )


def test_export_job_writes_the_file_and_records_path_and_rows(
    loaded: Engine, resources: dict, paths: StoragePaths
) -> None:
    config = {"company": "acme", "dataset": "sales", "format": "xml", "start": "2025-03-10"}

    result = _run_export(resources, config)

    assert result.success
    [output] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    metadata = {k: v.value for k, v in output.event_specific_data.metadata.items()}
    path = Path(metadata["path"])
    assert path == paths.exports / "acme" / f"sales_from-2025-03-10_{result.run_id[:8]}.xml"
    first = dt.date(2025, 3, 10)
    wanted = [r for r in ACME["sales"] if r["sold_at"].astimezone(ZoneInfo(TZ)).date() >= first]
    assert metadata["rows"] == metadata["dagster/row_count"] == len(wanted)
    assert metadata["bytes"] == path.stat().st_size
    assert _parse(path, "xml") == _expected("sales", wanted)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"company": "acme corp", "dataset": "sales"}, "invalid company 'acme corp'"),
        ({"company": "acme", "dataset": "orders"}, "unknown dataset 'orders'"),
        ({"company": "acme", "dataset": "sales", "format": "xlsx"}, "unknown format 'xlsx'"),
        (
            {"company": "acme", "dataset": "sales", "start": "2025-03-02", "end": "2025-03-01"},
            "start 2025-03-02 is after end 2025-03-01",
        ),
    ],
)
def test_export_job_fails_on_invalid_config_without_writing(
    tmp_path: Path, paths: StoragePaths, config: dict, message: str
) -> None:
    resources = {
        "warehouse": WarehouseResource(url=f"sqlite:///{tmp_path}/warehouse.db"),
        "storage": StorageResource(data_dir=str(paths.data_dir), inbox_dir=str(paths.inbox)),
    }

    result = _run_export(resources, config)

    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert f"invalid export config: {message}" in failure.event_specific_data.error.message
    assert not paths.exports.exists()
