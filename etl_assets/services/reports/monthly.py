"""Monthly sales report of one company: figures computed in SQL, written as CSV, JSON, XML, PDF.

Days are calendar days in the report's timezone, with UTC bounds from zoneinfo (DST days have
23 or 25 hours) joined to `sales` in SQL, which works the same on PostgreSQL and SQLite. The
figures are defined as in `daily_sales`. Every query is filtered by company, including the join
to `products`.
"""

import csv
import datetime as dt
import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

from sqlalchemy import (
    BigInteger,
    Connection,
    Date,
    Engine,
    Label,
    Select,
    and_,
    case,
    cast,
    func,
    literal,
    select,
    type_coerce,
    union_all,
)

from etl_assets.contract import company_problem
from etl_assets.services.figures.sales_day import DayBounds, cents, day_bounds, revenue
from etl_assets.services.output import atomic_open, csv_row, xml_safe
from etl_assets.services.reports.model import (
    DayFigures,
    Figures,
    MonthlyReport,
    ProductFigures,
    ReportFiles,
    ReportResult,
)
from etl_assets.warehouse.dialect import read_one_snapshot
from etl_assets.warehouse.schema import MONEY, TIMESTAMP, products, sales

TOP_PRODUCTS = 10
FIGURES = ("revenue", "units", "transactions", "returns")


def monthly_report(
    conn: Connection, company: str, month: dt.date, timezone: str, top: int = TOP_PRODUCTS
) -> MonthlyReport:
    """Compute one company's figures for one month: each day, and its top products."""
    first = month.replace(day=1)
    last = (first + dt.timedelta(days=32)).replace(day=1) - dt.timedelta(days=1)
    bounds = day_bounds(first, last, timezone)
    dialect = conn.dialect.name
    return MonthlyReport(
        company=company,
        month=first,
        timezone=timezone,
        days=[
            DayFigures(
                day=row.day,
                revenue=cents(row.revenue),
                units=row.units,
                transactions=row.transactions,
                returns=row.returns,
            )
            for row in conn.execute(_daily_query(company, bounds, dialect))
        ],
        top_products=[
            ProductFigures(
                rank=rank,
                sku=row.sku,
                name=row.name,
                units=row.units,
                revenue=cents(row.revenue),
                transactions=row.transactions,
            )
            for rank, row in enumerate(
                conn.execute(_top_products_query(company, bounds, dialect, top)), start=1
            )
        ],
        generated_at=dt.datetime.now(dt.UTC).replace(microsecond=0),
    )


def _daily_query(company: str, bounds: list[DayBounds], dialect: str) -> Select:
    """The figures of each day of `bounds`, days without sales included (as zeros)."""
    # A literal table of the days (no temporary table: the report only reads), outer joined so
    # that days without sales are still rows.
    days = union_all(
        *[
            select(
                literal(b.day, Date).label("day"),
                literal(b.start_utc, TIMESTAMP).label("starts_at"),
                literal(b.end_utc, TIMESTAMP).label("ends_at"),
            )
            for b in bounds
        ]
    ).subquery("days")
    in_day = and_(
        sales.c.company == company,
        sales.c.sold_at >= days.c.starts_at,
        sales.c.sold_at < days.c.ends_at,
    )
    return (
        select(days.c.day, *_figure_columns(dialect))
        .select_from(days.outerjoin(sales, in_day))
        .group_by(days.c.day)
        .order_by(days.c.day)
    )


def _top_products_query(company: str, bounds: list[DayBounds], dialect: str, top: int) -> Select:
    """The `top` products of the period by net revenue, then SKU, with their names."""
    net_revenue = _revenue(dialect)
    return (
        select(
            sales.c.sku,
            products.c.name,
            cast(func.sum(sales.c.quantity), BigInteger).label("units"),
            net_revenue,
            func.count().label("transactions"),
        )
        .select_from(
            sales.outerjoin(
                products, and_(products.c.company == sales.c.company, products.c.sku == sales.c.sku)
            )
        )
        .where(
            sales.c.company == company,
            sales.c.sold_at >= bounds[0].start_utc,
            sales.c.sold_at < bounds[-1].end_utc,
        )
        .group_by(sales.c.sku, products.c.name)
        .order_by(net_revenue.desc(), sales.c.sku)
        .limit(top)
    )


def generate_monthly_report(
    engine: Engine, company: str, month: dt.date, timezone: str, directory: Path
) -> ReportResult:
    """Compute one company's monthly report and write its CSV, JSON, XML and PDF files."""
    if problem := company_problem(company):
        raise ValueError(problem)
    with engine.connect() as conn:
        # One snapshot for both queries, so the top products agree with the daily totals.
        read_one_snapshot(conn)
        with conn.begin():
            report = monthly_report(conn, company, month, timezone)
    return ReportResult(report=report, files=write_monthly_report(report, directory))


def write_monthly_report(report: MonthlyReport, directory: Path) -> ReportFiles:
    """Write the report's four files, each atomically, into `directory`."""
    stem = directory / f"monthly_sales_{report.company}_{report.label}"
    files = ReportFiles(
        csv=stem.with_suffix(".csv"),
        json=stem.with_suffix(".json"),
        xml=stem.with_suffix(".xml"),
        pdf=stem.with_suffix(".pdf"),
    )
    with atomic_open(files.csv, "w", encoding="utf-8", newline="") as stream:
        stream.write(report_csv(report))
    with atomic_open(files.json, "w", encoding="utf-8") as stream:
        stream.write(report_json(report))
    with atomic_open(files.xml, "wb") as stream:
        stream.write(report_xml(report))
    # Imported here: matplotlib and fpdf add over a second to the start of every process that
    # loads the code location (each run worker, the code server), and only reports need them.
    from etl_assets.services.reports.pdf import report_pdf

    with atomic_open(files.pdf, "wb") as stream:
        stream.write(report_pdf(report))
    return files


def report_csv(report: MonthlyReport) -> str:
    """One row per day, then a `total` row."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["day", *FIGURES])
    # Figures go in as numbers (Decimal, int), so `csv_row` keeps a negative one a number.
    for day in report.days:
        writer.writerow(csv_row([day.day, *(getattr(day, name) for name in FIGURES)]))
    totals = report.totals
    writer.writerow(csv_row(["total", *(getattr(totals, name) for name in FIGURES)]))
    return buffer.getvalue()


def report_json(report: MonthlyReport) -> str:
    """The whole report as one JSON document; amounts are decimal strings, so they stay exact."""
    document = {
        "company": report.company,
        "month": report.label,
        "timezone": report.timezone,
        "generated_at": report.generated_at.isoformat(),
        "totals": _figures_dict(report.totals),
        "days": [{"day": d.day.isoformat(), **_figures_dict(d)} for d in report.days],
        "top_products": [
            {
                "rank": p.rank,
                "sku": p.sku,
                "name": p.name,
                "units": p.units,
                "revenue": str(p.revenue),
                "transactions": p.transactions,
            }
            for p in report.top_products
        ],
    }
    return json.dumps(document, ensure_ascii=False, indent=2) + "\n"


def report_xml(report: MonthlyReport) -> bytes:
    """The whole report as an XML document (UTF-8)."""
    root = ET.Element(
        "monthly_sales_report",
        company=report.company,
        month=report.label,
        timezone=report.timezone,
        generated_at=report.generated_at.isoformat(),
    )
    _figure_elements(ET.SubElement(root, "totals"), report.totals)
    days = ET.SubElement(root, "days")
    for day in report.days:
        _figure_elements(ET.SubElement(days, "day", date=day.day.isoformat()), day)
    top = ET.SubElement(root, "top_products")
    for product in report.top_products:
        element = ET.SubElement(top, "product", rank=str(product.rank), sku=xml_safe(product.sku))
        if product.name is not None:
            ET.SubElement(element, "name").text = xml_safe(product.name)
        ET.SubElement(element, "units").text = str(product.units)
        ET.SubElement(element, "revenue").text = str(product.revenue)
        ET.SubElement(element, "transactions").text = str(product.transactions)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def _revenue(dialect: str) -> Label:
    # Typed as MONEY so SQLite's float sum comes back as a Decimal rounded to cents.
    return type_coerce(func.coalesce(revenue(dialect), 0), MONEY).label("revenue")


def _figure_columns(dialect: str) -> list[Label]:
    return [
        _revenue(dialect),
        cast(func.coalesce(func.sum(sales.c.quantity), 0), BigInteger).label("units"),
        func.count(sales.c.transaction_id).label("transactions"),
        func.count(case((sales.c.quantity < 0, 1))).label("returns"),
    ]


def _values(figures: Figures) -> list[str]:
    return [str(getattr(figures, name)) for name in FIGURES]


def _figures_dict(figures: Figures) -> dict[str, str | int]:
    return {
        "revenue": str(figures.revenue),
        "units": figures.units,
        "transactions": figures.transactions,
        "returns": figures.returns,
    }


def _figure_elements(parent: ET.Element, figures: Figures) -> None:
    for name, value in zip(FIGURES, _values(figures), strict=True):
        ET.SubElement(parent, name).text = value
