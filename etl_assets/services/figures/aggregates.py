"""Daily sales aggregates, computed in the warehouse with one `INSERT ... SELECT ... GROUP BY`.

Days are calendar days in a timezone. Their UTC bounds come from zoneinfo (so daylight-saving
days are 23 or 25 hours long) and are joined to `sales.sold_at` as half-open intervals, which
reads the `sold_at` index and works the same on PostgreSQL and SQLite.

One statement refreshes every company. When it fails (one company's figures overflow, say),
the range is refreshed again one company at a time, each in a savepoint, so that only the
failing companies keep their previous figures; they are reported, never silently skipped.
"""

import datetime as dt
import time
from dataclasses import dataclass, field
from decimal import Decimal

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
    union,
)
from sqlalchemy.exc import DBAPIError

from etl_assets.services.figures.sales_day import DayBounds, cents, day_bounds, revenue
from etl_assets.warehouse.dialect import lock_against_other_writers, money_sum
from etl_assets.warehouse.schema import TIMESTAMP, daily_sales, sales


@dataclass(frozen=True)
class CompanyFailure:
    """A company whose figures could not be written, and the database's reason."""

    company: str
    error: str


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
    failed: list[CompanyFailure] = field(default_factory=list)

    @property
    def days(self) -> int:
        """Calendar days in the range, with or without sales."""
        return (self.last_day - self.first_day).days + 1


def company_failure(company: str, exc: DBAPIError) -> CompanyFailure:
    """The company's failure, with the driver's message on one line (e.g. `integer overflow`).

    A lost connection is re-raised: it is no company's fault, and nothing more will work.
    """
    if exc.connection_invalidated:
        raise exc
    return CompanyFailure(company, " ".join(str(exc.orig).split()))


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
            money_sum(conn.dialect.name, daily_sales.c.revenue),
        )
        .where(in_range)
        .group_by(daily_sales.c.company)
        .order_by(daily_sales.c.company)
    )
    return [
        CompanyDays(company, int(rows), first, last, cents(amount))
        for company, rows, first, last, amount in conn.execute(query)
    ]


def refresh_daily_sales(
    conn: Connection, first_day: dt.date, last_day: dt.date, timezone: str
) -> DailySalesResult:
    """Recompute `daily_sales` for every company and local day in the range.

    Runs in the caller's transaction: deletes the range, then inserts one row per company and
    day that has sales (days without sales get no row), so re-running it is idempotent. A
    company whose figures fail (an overflow, any database error on its rows) keeps its
    previous rows and is listed in `failed`; every other company is refreshed all the same.
    """
    started = time.perf_counter()
    bounds = day_bounds(first_day, last_day, timezone)
    result = DailySalesResult(first_day=first_day, last_day=last_day, timezone=timezone)
    # Serialise refreshes: two overlapping ones would both insert the same keys.
    lock_against_other_writers(conn, daily_sales)
    before = daily_sales_in_range(conn, first_day, last_day)
    days = _bounds_table(conn)
    conn.execute(
        days.insert(),
        [{"day": b.day, "start_utc": b.start_utc, "end_utc": b.end_utc} for b in bounds],
    )
    try:
        result.rows_deleted = _replace(conn, days, bounds, company=None)
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise
        # Some company's figures fail the statement for all: one statement per company.
        for company in _companies(conn, bounds):
            try:
                result.rows_deleted += _replace(conn, days, bounds, company)
            except DBAPIError as company_exc:
                result.failed.append(company_failure(company, company_exc))
    days.drop(conn)
    failed = [f.company for f in result.failed]
    result.deleted = [c for c in before if c.company not in failed]
    written = daily_sales_in_range(conn, first_day, last_day)
    result.written = [c for c in written if c.company not in failed]
    totals = conn.execute(
        select(
            func.count(),
            money_sum(conn.dialect.name, daily_sales.c.revenue),
            func.sum(daily_sales.c.units),
            func.sum(daily_sales.c.transactions),
            func.sum(daily_sales.c.returns),
        ).where(
            daily_sales.c.day.between(first_day, last_day), daily_sales.c.company.not_in(failed)
        )
    ).one()
    result.rows_written = int(totals[0])
    result.revenue = cents(totals[1])
    result.units, result.transactions, result.returns = (int(v or 0) for v in totals[2:])
    result.seconds = time.perf_counter() - started
    return result


def _replace(conn: Connection, days: Table, bounds: list[DayBounds], company: str | None) -> int:
    """Delete and recompute the range of one company (None: all) in a savepoint, so that a
    failure undoes only this; returns the rows deleted."""
    in_range = daily_sales.c.day.between(bounds[0].day, bounds[-1].day)
    if company is not None:
        in_range = and_(in_range, daily_sales.c.company == company)
    with conn.begin_nested():
        deleted = conn.execute(delete(daily_sales).where(in_range)).rowcount
        conn.execute(_insert_statement(days, conn.dialect.name, company))
    return deleted


def _companies(conn: Connection, bounds: list[DayBounds]) -> list[str]:
    """The companies a refresh of the range concerns: with sales in it or rows to replace."""
    selling = select(sales.c.company).where(
        sales.c.sold_at >= bounds[0].start_utc, sales.c.sold_at < bounds[-1].end_utc
    )
    listed = select(daily_sales.c.company).where(
        daily_sales.c.day.between(bounds[0].day, bounds[-1].day)
    )
    return sorted(conn.execute(union(selling, listed)).scalars())


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


def _insert_statement(days: Table, dialect: str, company: str | None) -> Insert:
    quantity = sales.c.quantity
    source = (
        select(
            sales.c.company,
            days.c.day,
            func.round(revenue(dialect), 2),
            func.sum(quantity),
            func.count(),
            func.sum(case((quantity < 0, 1), else_=0)),
            func.count(sales.c.sku.distinct()),
        )
        .select_from(days)
        .join(sales, and_(sales.c.sold_at >= days.c.start_utc, sales.c.sold_at < days.c.end_utc))
        .group_by(sales.c.company, days.c.day)
    )
    if company is not None:
        source = source.where(sales.c.company == company)
    columns = ["company", "day", "revenue", "units", "transactions", "returns", "distinct_products"]
    return daily_sales.insert().from_select(columns, source)
