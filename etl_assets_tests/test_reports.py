"""Monthly sales report: figures, the four files parsed back, tenant isolation, asset, schedule."""

import csv
import datetime as dt
import json
import xml.etree.ElementTree as ET
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
from pypdf import PdfReader
from sqlalchemy import Engine, select

from etl_assets.contract import QUANTITY_LIMIT
from etl_assets.definitions import defs
from etl_assets.defs.calendar import Calendar
from etl_assets.defs.reports.assets import build_monthly_sales_report
from etl_assets.defs.reports.schedules import build_monthly_reports_schedule
from etl_assets.services.figures.aggregates import refresh_daily_sales
from etl_assets.services.reports.model import ReportResult
from etl_assets.services.reports.monthly import generate_monthly_report
from etl_assets.services.storage import StoragePaths
from etl_assets.warehouse.schema import daily_sales, products, sales

TZ = "America/New_York"
MONTH = dt.date(2025, 12, 1)
NOW = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
CENT = Decimal("0.01")
NAMES = {"A": 'Café <Crème> & "Co"', "B": "Bolt\x01 M4", "C": "Chair"}
# (transaction id, local time in TZ, sku, quantity, unit price); same ids and SKUs in both
# companies, so a query missing its company filter would mix them.
ROWS = [
    ("t01", dt.datetime(2025, 11, 30, 23, 59, 59), "A", 5, "1.00"),  # November: excluded
    ("t02", dt.datetime(2025, 12, 1, 0, 0, 0), "A", 3, "19.99"),  # first instant of the month
    ("t03", dt.datetime(2025, 12, 1, 18, 30), "B", 10, "0.10"),
    ("t04", dt.datetime(2025, 12, 1, 21, 0), "A", -1, "19.99"),  # a return, 02:00 UTC next day
    ("t05", dt.datetime(2025, 12, 15, 12, 0), "C", 2, "120.50"),
    ("t06", dt.datetime(2025, 12, 15, 13, 0), "D", 1, "7.25"),  # orphan SKU: no product
    ("t07", dt.datetime(2025, 12, 31, 23, 59, 59), "B", 4, "0.10"),  # last second of the month
    ("t08", dt.datetime(2026, 1, 1, 0, 0, 0), "C", 9, "120.50"),  # January: excluded
]
# The other tenant: identical keys, figures no acme expectation can contain.
OTHER = [(tid, at, sku, qty * 7, "977.31") for tid, at, sku, qty, _price in ROWS]
OTHER_NAME = "Globex confidential"


def _sale(company: str, tid: str, local: dt.datetime, sku: str, qty: int, price: str) -> dict:
    return {
        "company": company,
        "transaction_id": tid,
        "sold_at": local.replace(tzinfo=ZoneInfo(TZ)),
        "sku": sku,
        "quantity": qty,
        "unit_price": Decimal(price),
        "customer_id": None,
        "upload_id": "upload-1",
        "updated_at": NOW,
    }


def _product(company: str, sku: str, name: str) -> dict:
    return {
        "company": company,
        "sku": sku,
        "name": name,
        "category": "uncategorized",
        "brand": None,
        "unit_price": Decimal("1.00"),
        "stock_quantity": 1,
        "upload_id": "upload-0",
        "updated_at": NOW,
    }


def _load(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            products.insert(),
            [_product("acme", sku, name) for sku, name in NAMES.items()]
            + [_product("globex", sku, OTHER_NAME) for sku in NAMES],
        )
        conn.execute(
            sales.insert(),
            [_sale("acme", *row) for row in ROWS] + [_sale("globex", *row) for row in OTHER],
        )


def _expected(rows: list[tuple], names: dict[str, str]) -> dict:
    """The report's figures, computed in Python from the inserted rows."""
    days = {
        MONTH + dt.timedelta(days=n): {"revenue": Decimal(0), "units": 0, "tx": 0, "ret": 0}
        for n in range(31)
    }
    top: dict[str, dict] = defaultdict(lambda: {"units": 0, "revenue": Decimal(0), "tx": 0})
    for _tid, local, sku, qty, price in rows:
        if local.date() not in days:
            continue
        amount = qty * Decimal(price)
        day = days[local.date()]
        day["revenue"] += amount
        day["units"] += qty
        day["tx"] += 1
        day["ret"] += qty < 0
        top[sku]["units"] += qty
        top[sku]["revenue"] += amount
        top[sku]["tx"] += 1
    ranked = sorted(top.items(), key=lambda item: (-item[1]["revenue"], item[0]))
    return {
        "days": {
            d.isoformat(): [str(v["revenue"].quantize(CENT)), v["units"], v["tx"], v["ret"]]
            for d, v in days.items()
        },
        "totals": [
            str(sum(v["revenue"] for v in days.values()).quantize(CENT)),
            sum(v["units"] for v in days.values()),
            sum(v["tx"] for v in days.values()),
            sum(v["ret"] for v in days.values()),
        ],
        "top": [
            [rank, sku, names.get(sku), v["units"], str(v["revenue"].quantize(CENT)), v["tx"]]
            for rank, (sku, v) in enumerate(ranked, start=1)
        ],
    }


def _report(engine: Engine, paths: StoragePaths, company: str = "acme") -> ReportResult:
    return generate_monthly_report(
        engine, company, MONTH, TZ, paths.report_dir(company, MONTH.strftime("%Y-%m"))
    )


def _csv_figures(path: Path) -> tuple[dict, list]:
    with open(path, newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    figures = {
        r["day"]: [r["revenue"], int(r["units"]), int(r["transactions"]), int(r["returns"])]
        for r in rows
    }
    return figures, figures.pop("total")


def _xml_figures(element: ET.Element) -> list:
    return [
        element.findtext("revenue"),
        int(element.findtext("units")),
        int(element.findtext("transactions")),
        int(element.findtext("returns")),
    ]


def test_report_files_parse_back_to_figures_computed_from_the_rows(
    engine: Engine, paths: StoragePaths
) -> None:
    _load(engine)
    expected = _expected(ROWS, NAMES)

    result = _report(engine, paths)

    files = result.files
    assert files.csv.parent == paths.data_dir / "reports" / "acme" / "2025-12"
    assert sorted(p.name for p in files.csv.parent.iterdir()) == [
        f"monthly_sales_acme_2025-12.{ext}" for ext in ("csv", "json", "pdf", "xml")
    ]
    csv_days, csv_total = _csv_figures(files.csv)
    assert csv_days == expected["days"]
    assert csv_total == expected["totals"]

    document = json.loads(files.json.read_text(encoding="utf-8"))
    assert (document["company"], document["month"], document["timezone"]) == ("acme", "2025-12", TZ)
    assert {
        d["day"]: [d["revenue"], d["units"], d["transactions"], d["returns"]]
        for d in document["days"]
    } == expected["days"]
    totals = document["totals"]
    assert [totals[k] for k in ("revenue", "units", "transactions", "returns")] == expected[
        "totals"
    ]
    assert [
        [p["rank"], p["sku"], p["name"], p["units"], p["revenue"], p["transactions"]]
        for p in document["top_products"]
    ] == expected["top"]

    root = ET.parse(files.xml).getroot()
    assert root.attrib == {
        "company": "acme",
        "month": "2025-12",
        "timezone": TZ,
        "generated_at": document["generated_at"],
    }
    assert {d.get("date"): _xml_figures(d) for d in root.iter("day")} == expected["days"]
    assert _xml_figures(root.find("totals")) == expected["totals"]
    # XML cannot hold U+0001, so that one character is replaced; markup characters round-trip.
    assert [
        [
            int(p.get("rank")),
            p.get("sku"),
            p.findtext("name"),
            int(p.findtext("units")),
            p.findtext("revenue"),
            int(p.findtext("transactions")),
        ]
        for p in root.iter("product")
    ] == [
        [rank, sku, name.replace("\x01", "\ufffd") if name else name, units, revenue, tx]
        for rank, sku, name, units, revenue, tx in expected["top"]
    ]


def test_pdf_holds_the_company_month_totals_and_a_chart_image(
    engine: Engine, paths: StoragePaths
) -> None:
    _load(engine)
    revenue, units, transactions, returns = _expected(ROWS, NAMES)["totals"]

    pdf = _report(engine, paths).files.pdf

    page = PdfReader(pdf).pages[0]
    text = page.extract_text()
    assert "Monthly sales report: acme, 2025-12" in text
    assert f"Revenue {Decimal(revenue):,.2f}" in text
    assert f"Units {units:,}" in text
    assert f"Transactions {transactions:,}" in text
    assert f"Returns {returns:,}" in text
    assert NAMES["A"] in text
    assert len(page.images) == 1
    width, height = page.images[0].image.size
    assert width > 600
    assert height > 200
    xobjects = page["/Resources"]["/XObject"]
    assert [xobjects[name].get_object()["/Subtype"] for name in xobjects] == ["/Image"]


def test_report_never_contains_another_companys_rows(engine: Engine, paths: StoragePaths) -> None:
    _load(engine)

    acme, globex = _report(engine, paths, "acme"), _report(engine, paths, "globex")

    expected_acme, expected_globex = (
        _expected(ROWS, NAMES),
        _expected(OTHER, dict.fromkeys(NAMES, OTHER_NAME)),
    )
    assert _csv_figures(acme.files.csv)[1] == expected_acme["totals"]
    assert _csv_figures(globex.files.csv)[1] == expected_globex["totals"]
    for path in (acme.files.csv, acme.files.json, acme.files.xml):
        content = path.read_text(encoding="utf-8")
        assert "977.31" not in content
        assert OTHER_NAME not in content
        assert "globex" not in content
    pdf_text = PdfReader(acme.files.pdf).pages[0].extract_text()
    assert OTHER_NAME not in pdf_text
    assert "globex" not in pdf_text
    globex_names = {p.name for p in globex.report.top_products}
    assert globex_names == {OTHER_NAME, None}


def test_month_without_sales_has_every_day_at_zero(engine: Engine, paths: StoragePaths) -> None:
    result = _report(engine, paths)

    csv_days, csv_total = _csv_figures(result.files.csv)
    assert csv_days == {
        (MONTH + dt.timedelta(days=n)).isoformat(): ["0.00", 0, 0, 0] for n in range(31)
    }
    assert csv_total == ["0.00", 0, 0, 0]
    assert json.loads(result.files.json.read_text(encoding="utf-8"))["top_products"] == []
    assert "No sales this month." in PdfReader(result.files.pdf).pages[0].extract_text()


def test_csv_keeps_negative_figures_numbers(engine: Engine, paths: StoragePaths) -> None:
    # A day of returns only: negative revenue and units, which formula neutralisation must not
    # turn into text.
    with engine.begin() as conn:
        conn.execute(
            sales.insert(), [_sale("acme", "r1", dt.datetime(2025, 12, 10, 12), "A", -3, "19.99")]
        )

    result = _report(engine, paths)

    with open(result.files.csv, newline="", encoding="utf-8") as stream:
        rows = {r["day"]: r for r in csv.DictReader(stream)}
    assert [rows["2025-12-10"][f] for f in ("revenue", "units", "transactions", "returns")] == [
        "-59.97",
        "-3",
        "1",
        "1",
    ]
    assert (rows["total"]["revenue"], rows["total"]["units"]) == ("-59.97", "-3")


def test_report_revenue_is_daily_sales_revenue_even_past_64_bit_integers(
    engine: Engine, paths: StoragePaths
) -> None:
    """Two lines of the largest quantity at a whole price: their product sum passes 2**63,
    which SQLite's integer SUM refuses; the report sums money as daily_sales does."""
    day = dt.datetime(2025, 12, 10, 12)
    with engine.begin() as conn:
        conn.execute(
            sales.insert(),
            [
                _sale("acme", tid, day, "A", QUANTITY_LIMIT, "5000000000.00")
                for tid in ("big-1", "big-2")
            ],
        )
        refresh_daily_sales(conn, MONTH, MONTH.replace(day=31), TZ)
        [daily] = conn.execute(select(daily_sales.c.revenue)).scalars().all()

    result = _report(engine, paths)

    [figures] = [d for d in result.report.days if d.day == day.date()]
    assert figures.revenue == Decimal(2 * QUANTITY_LIMIT) * Decimal("5000000000.00")
    assert figures.revenue == daily


def test_rewriting_a_report_replaces_its_files_and_leaves_no_temporary(
    engine: Engine, paths: StoragePaths
) -> None:
    first = _report(engine, paths)
    _load(engine)

    second = _report(engine, paths)

    assert second.files == first.files
    assert _csv_figures(second.files.csv)[1] == _expected(ROWS, NAMES)["totals"]
    assert [p.name for p in second.files.csv.parent.iterdir() if p.name.startswith(".")] == []


@pytest.fixture
def instance() -> dg.DagsterInstance:
    # Schedule contexts need an instance that has a reference, which ephemeral ones lack.
    with dg.instance_for_test() as instance:
        yield instance


def test_materialize_one_report_partition(
    engine: Engine, resources: dict, paths: StoragePaths, instance: dg.DagsterInstance
) -> None:
    _load(engine)
    instance.add_dynamic_partitions("companies", ["acme", "globex"])
    asset = build_monthly_sales_report(Calendar(timezone=TZ, start="2025-01-01"))
    key = dg.MultiPartitionKey({"month": "2025-12-01", "company": "acme"})

    result = dg.materialize([asset], instance=instance, resources=resources, partition_key=key)

    assert result.success
    [materialization] = result.asset_materializations_for_node("monthly_sales_report")
    assert materialization.partition == key
    metadata = {k: v.value for k, v in materialization.metadata.items()}
    revenue, units, transactions, returns = _expected(ROWS, NAMES)["totals"]
    directory = paths.report_dir("acme", "2025-12")
    for ext in ("csv", "json", "xml", "pdf"):
        assert metadata[f"{ext}_file"] == str(directory / f"monthly_sales_acme_2025-12.{ext}")
        assert Path(metadata[f"{ext}_file"]).is_file()
    assert metadata["dagster/row_count"] == 31
    assert metadata["revenue"] == float(revenue)
    assert (metadata["units"], metadata["transactions"], metadata["returns"]) == (
        units,
        transactions,
        returns,
    )
    assert not (paths.data_dir / "reports" / "globex").exists()


def test_report_launched_with_a_plain_partition_tag(
    engine: Engine, resources: dict, paths: StoragePaths, instance: dg.DagsterInstance
) -> None:
    """`dagster job launch --tags '{"dagster/partition": "acme|2025-12-01"}'` (README) works."""
    _load(engine)
    instance.add_dynamic_partitions("companies", ["acme"])
    asset = build_monthly_sales_report(Calendar(timezone=TZ, start="2025-01-01"))
    job = dg.Definitions(
        assets=[asset],
        jobs=[dg.define_asset_job("reports", selection=[asset])],
        resources=resources,
    ).resolve_job_def("reports")

    result = job.execute_in_process(
        instance=instance, tags={"dagster/partition": "acme|2025-12-01"}
    )

    assert result.success
    assert (paths.report_dir("acme", "2025-12") / "monthly_sales_acme_2025-12.pdf").is_file()


def _schedule_requests(
    calendar: Calendar, instance: dg.DagsterInstance, at: dt.datetime
) -> list[dg.RunRequest] | dg.SkipReason:
    schedule = build_monthly_reports_schedule(calendar)
    with dg.build_schedule_context(instance=instance, scheduled_execution_time=at) as context:
        return schedule(context)


@pytest.mark.parametrize(
    ("timezone", "at", "month"),
    [
        ("UTC", dt.datetime(2026, 1, 1, 3, tzinfo=dt.UTC), "2025-12-01"),
        ("UTC", dt.datetime(2025, 3, 1, 3, tzinfo=dt.UTC), "2025-02-01"),
        # 03:00 on 1 January in New York is 08:00 UTC; in Tokyo, 18:00 UTC the day before.
        ("America/New_York", dt.datetime(2026, 1, 1, 8, tzinfo=dt.UTC), "2025-12-01"),
        ("Asia/Tokyo", dt.datetime(2025, 12, 31, 18, tzinfo=dt.UTC), "2025-12-01"),
    ],
)
def test_schedule_requests_last_month_for_every_company(
    instance: dg.DagsterInstance, timezone: str, at: dt.datetime, month: str
) -> None:
    instance.add_dynamic_partitions("companies", ["globex", "acme"])
    calendar = Calendar(timezone=timezone, start="2024-01-01")

    first = _schedule_requests(calendar, instance, at)
    again = _schedule_requests(calendar, instance, at)

    expected = [dg.MultiPartitionKey({"month": month, "company": c}) for c in ("acme", "globex")]
    assert [r.partition_key for r in first] == expected
    assert [r.run_key for r in first] == [str(k) for k in expected]
    assert [r.run_key for r in again] == [r.run_key for r in first]
    assert [r.tags["etl/report_company"] for r in first] == ["acme", "globex"]
    assert all("etl/company" not in r.tags for r in first), "the import concurrency tag"
    partitions = build_monthly_sales_report(calendar).partitions_def
    with dg.partition_loading_context(effective_dt=at, dynamic_partitions_store=instance):
        assert all(partitions.has_partition_key(k) for k in expected)


def test_schedule_skips_without_companies_or_before_the_first_month(
    instance: dg.DagsterInstance,
) -> None:
    at = dt.datetime(2026, 1, 1, 3, tzinfo=dt.UTC)

    empty = _schedule_requests(Calendar(), instance, at)
    instance.add_dynamic_partitions("companies", ["acme"])
    early = _schedule_requests(Calendar(start="2026-01-01"), instance, at)

    assert isinstance(empty, dg.SkipReason)
    assert "no companies" in empty.skip_message
    assert isinstance(early, dg.SkipReason)
    assert "2025-12-01 is before the first partition 2026-01-01" in early.skip_message


def test_code_location_has_the_reports_domain() -> None:
    repository = defs.get_repository_def()
    assert {"monthly_reports_job", "export_job"} <= {j.name for j in repository.get_all_jobs()}
    schedule = repository.get_schedule_def("monthly_reports_schedule")
    assert schedule.cron_schedule == "0 3 1 * *"
    assert schedule.job_name == "monthly_reports_job"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    groups = repository.assets_defs_by_key[dg.AssetKey("monthly_sales_report")].group_names_by_key
    assert groups == {dg.AssetKey("monthly_sales_report"): "reports"}
