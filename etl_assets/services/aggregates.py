"""Daily sales aggregates, computed in the warehouse with one `INSERT ... SELECT ... GROUP BY`.

Days are calendar days in a timezone. Their UTC bounds come from zoneinfo (so daylight-saving
days are 23 or 25 hours long) and are joined to `sales.sold_at` as half-open intervals, which
reads the `sold_at` index and works the same on PostgreSQL and SQLite.
"""

import datetime as dt
import itertools
import time
from dataclasses import dataclass, field
from decimal import Decimal
from zoneinfo import ZoneInfo

from sqlalchemy import (
    Column,
    Connection,
    Date,
    Insert,
    MetaData,
    Table,
    and_,
    case,
    delete,
    func,
    select,
    text,
)

from etl_assets.warehouse.schema import TIMESTAMP, daily_sales, lock_for_writing, sales

CENT = Decimal("0.01")


@dataclass(frozen=True)
class DayBounds:
    """One local calendar day as a half-open UTC interval."""

    day: dt.date
    start_utc: dt.datetime
    end_utc: dt.datetime


@dataclass(frozen=True)
class CompanyDays:
    """`daily_sales` rows of one company in a range, and the days they cover."""

    company: str
    rows: int
    first_day: dt.date
    last_day: dt.date
    revenue: Decimal


@dataclass
class DailySalesResult:
    """What one refresh of a day range did."""

    first_day: dt.date
    last_day: dt.date
    timezone: str
    rows_deleted: int = 0
    rows_written: int = 0
    revenue: Decimal = Decimal("0.00")
    units: int = 0
    transactions: int = 0
    returns: int = 0
    seconds: float = 0.0
    deleted: list[CompanyDays] = field(default_factory=list)
    written: list[CompanyDays] = field(default_factory=list)

    @property
    def days(self) -> int:
        """Calendar days in the range, with or without sales."""
        return (self.last_day - self.first_day).days + 1


def day_bounds(first_day: dt.date, last_day: dt.date, timezone: str) -> list[DayBounds]:
    """UTC bounds of each local day from `first_day` to `last_day` inclusive."""
    if last_day < first_day:
        raise ValueError(f"last day {last_day} is before first day {first_day}")
    zone = ZoneInfo(timezone)
    days = [first_day + dt.timedelta(days=n) for n in range((last_day - first_day).days + 1)]
    # Each day ends where the next begins, so the intervals tile the range without gaps.
    starts = [
        dt.datetime.combine(d, dt.time(), zone).astimezone(dt.UTC)
        for d in [*days, last_day + dt.timedelta(days=1)]
    ]
    return [DayBounds(d, s, e) for d, (s, e) in zip(days, itertools.pairwise(starts), strict=True)]


def daily_sales_in_range(
    conn: Connection, first_day: dt.date, last_day: dt.date
) -> list[CompanyDays]:
    """Per company, the `daily_sales` rows a refresh of the range would delete."""
    in_range = daily_sales.c.day.between(first_day, last_day)
    query = (
        select(
            daily_sales.c.company,
            func.count(),
            func.min(daily_sales.c.day),
            func.max(daily_sales.c.day),
            func.sum(daily_sales.c.revenue),
        )
        .where(in_range)
        .group_by(daily_sales.c.company)
        .order_by(daily_sales.c.company)
    )
    return [
        CompanyDays(company, int(rows), first, last, _money(revenue))
        for company, rows, first, last, revenue in conn.execute(query)
    ]


def refresh_daily_sales(
    conn: Connection, first_day: dt.date, last_day: dt.date, timezone: str
) -> DailySalesResult:
    """Recompute `daily_sales` for every company and local day in the range.

    Runs in the caller's transaction: deletes the range, then inserts one row per company and
    day that has sales (days without sales get no row), so re-running it is idempotent.
    """
    started = time.perf_counter()
    bounds = day_bounds(first_day, last_day, timezone)
    result = DailySalesResult(first_day=first_day, last_day=last_day, timezone=timezone)
    _lock(conn)
    result.deleted = daily_sales_in_range(conn, first_day, last_day)
    result.rows_deleted = conn.execute(
        delete(daily_sales).where(daily_sales.c.day.between(first_day, last_day))
    ).rowcount
    days = _bounds_table(conn)
    conn.execute(
        days.insert(),
        [{"day": b.day, "start_utc": b.start_utc, "end_utc": b.end_utc} for b in bounds],
    )
    conn.execute(_insert_statement(days))
    days.drop(conn)
    result.written = daily_sales_in_range(conn, first_day, last_day)
    totals = conn.execute(
        select(
            func.count(),
            func.sum(daily_sales.c.revenue),
            func.sum(daily_sales.c.units),
            func.sum(daily_sales.c.transactions),
            func.sum(daily_sales.c.returns),
        ).where(daily_sales.c.day.between(first_day, last_day))
    ).one()
    result.rows_written = int(totals[0])
    result.revenue = _money(totals[1])
    result.units, result.transactions, result.returns = (int(v or 0) for v in totals[2:])
    result.seconds = time.perf_counter() - started
    return result


def _lock(conn: Connection) -> None:
    """Serialise refreshes: two overlapping ones would both insert the same keys."""
    if conn.dialect.name == "postgresql":
        # Blocks other writers of daily_sales until commit; readers are not blocked.
        conn.execute(text("LOCK TABLE daily_sales IN SHARE ROW EXCLUSIVE MODE"))
    else:
        lock_for_writing(conn)


def _bounds_table(conn: Connection) -> Table:
    table = Table(
        "daily_sales_days",
        MetaData(),
        Column("day", Date, primary_key=True),
        Column("start_utc", TIMESTAMP, nullable=False),
        Column("end_utc", TIMESTAMP, nullable=False),
        prefixes=["TEMPORARY"],
    )
    table.create(conn)
    return table


def _insert_statement(days: Table) -> Insert:
    quantity = sales.c.quantity
    source = (
        select(
            sales.c.company,
            days.c.day,
            func.round(func.sum(quantity * sales.c.unit_price), 2),
            func.sum(quantity),
            func.count(),
            func.sum(case((quantity < 0, 1), else_=0)),
            func.count(sales.c.sku.distinct()),
        )
        .select_from(days)
        .join(sales, and_(sales.c.sold_at >= days.c.start_utc, sales.c.sold_at < days.c.end_utc))
        .group_by(sales.c.company, days.c.day)
    )
    columns = ["company", "day", "revenue", "units", "transactions", "returns", "distinct_products"]
    return daily_sales.insert().from_select(columns, source)


def _money(value: object) -> Decimal:
    # SQLite sums NUMERIC as binary floats; quantising gives both dialects the same cents.
    return Decimal(str(value or 0)).quantize(CENT)
