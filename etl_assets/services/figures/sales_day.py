"""The sales figures of local days: one definition for `daily_sales`, the dashboard and reports.

A local day is a half-open UTC interval from zoneinfo (daylight-saving days are 23 or 25 hours
long), joined to `sales.sold_at` in SQL, the same on PostgreSQL and SQLite. Revenue is
Σ quantity × unit_price, net of returns; amounts are summed exactly on PostgreSQL and without
integer overflow on SQLite, and rounded to cents the same way everywhere. A report therefore
never disagrees with `daily_sales`.
"""

import datetime as dt
import itertools
from dataclasses import dataclass
from decimal import Decimal
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement

from etl_assets.warehouse.dialect import money_sum
from etl_assets.warehouse.schema import sales

CENT = Decimal("0.01")


@dataclass(frozen=True)
class DayBounds:
    """One local calendar day as a half-open UTC interval."""

    day: dt.date
    start_utc: dt.datetime
    end_utc: dt.datetime


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


def revenue(dialect: str) -> ColumnElement[Decimal]:
    """Net revenue of the sales lines in the group: returns (negative quantities) subtract."""
    return money_sum(dialect, sales.c.quantity * sales.c.unit_price)


def cents(value: object) -> Decimal:
    """An amount rounded to cents; SQLite sums NUMERIC as binary floats, so both dialects give
    the same cents only once rounded."""
    return Decimal(str(value or 0)).quantize(CENT)
