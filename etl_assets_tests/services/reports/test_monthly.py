"""Monthly sales report: figures, the four files parsed back, tenant isolation."""

import csv
import datetime as dt
import json
import xml.etree.ElementTree as ET
from decimal import Decimal
from pathlib import Path

from pypdf import PdfReader
from sqlalchemy import Engine, select

from etl_assets.contract import QUANTITY_LIMIT
from etl_assets.services.figures.aggregates import refresh_daily_sales
from etl_assets.services.reports.model import ReportResult
from etl_assets.services.reports.monthly import generate_monthly_report
from etl_assets.services.storage import StoragePaths
from etl_assets.warehouse.schema import daily_sales, sales
from etl_assets_tests.services.reports.reports_dataset import (
    MONTH,
    NAMES,
    OTHER,
    OTHER_NAME,
    ROWS,
    TZ,
    expected_report,
    load_month,
    sale_row,
)


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
    load_month(engine)
    expected = expected_report(ROWS, NAMES)

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
    load_month(engine)
    revenue, units, transactions, returns = expected_report(ROWS, NAMES)["totals"]

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
    load_month(engine)

    acme, globex = _report(engine, paths, "acme"), _report(engine, paths, "globex")

    expected_acme, expected_globex = (
        expected_report(ROWS, NAMES),
        expected_report(OTHER, dict.fromkeys(NAMES, OTHER_NAME)),
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
            sales.insert(),
            [sale_row("acme", "r1", dt.datetime(2025, 12, 10, 12), "A", -3, "19.99")],
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
                sale_row("acme", tid, day, "A", QUANTITY_LIMIT, "5000000000.00")
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
    load_month(engine)

    second = _report(engine, paths)

    assert second.files == first.files
    assert _csv_figures(second.files.csv)[1] == expected_report(ROWS, NAMES)["totals"]
    assert [p.name for p in second.files.csv.parent.iterdir() if p.name.startswith(".")] == []
