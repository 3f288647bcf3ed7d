"""Dashboard metrics per company: computed in the warehouse, stored long-format, cached in Redis.

Every company is computed by the same few queries, and stored in a transaction of its own; a
company whose figures fail is reported and keeps its previous rows, the others are written.

Redis layout (every key expires after `ttl_seconds`):

- `<prefix>metrics:<company>`: one JSON document, `CompanyMetrics.as_json()`; money is a string
  with two decimals (exact), counts are integers.
- `<prefix>metrics:companies`: a JSON list of the companies, sorted.
"""

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from redis import Redis
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Integer,
    Select,
    and_,
    func,
    literal,
    select,
    union,
    union_all,
)
from sqlalchemy.exc import DBAPIError

from etl_assets.services.figures.aggregates import CompanyFailure, company_failure
from etl_assets.services.figures.sales_day import cents, day_bounds, revenue
from etl_assets.warehouse.dialect import money_sum
from etl_assets.warehouse.schema import TIMESTAMP, dashboard_metrics, products, sales

WINDOW_DAYS = 30
NO_BRAND = "(unbranded)"
"""The `products_by_brand` bucket of products without a brand."""


@dataclass(frozen=True)
class DailyFigures:
    """Net revenue and units of one local day (returns subtract)."""

    day: dt.date
    revenue: Decimal
    units: int


@dataclass
class CompanyMetrics:
    """Every dashboard figure of one company."""

    company: str
    computed_at: dt.datetime
    timezone: str
    today: dt.date
    products: int = 0
    stock_value: Decimal = Decimal("0.00")
    revenue: Decimal = Decimal("0.00")
    units: int = 0
    transactions: int = 0
    last_30_days: list[DailyFigures] = field(default_factory=list)
    products_by_category: dict[str, int] = field(default_factory=dict)
    products_by_brand: dict[str, int] = field(default_factory=dict)

    @property
    def revenue_last_30_days(self) -> Decimal:
        """Net revenue over the window."""
        return sum((d.revenue for d in self.last_30_days), Decimal("0.00"))

    def rows(self) -> list[dict[str, Any]]:
        """The `dashboard_metrics` rows: one per (metric, dimension)."""
        figures: list[tuple[str, str, Decimal | int]] = [
            ("products", "", self.products),
            ("stock_value", "", self.stock_value),
            ("revenue", "", self.revenue),
            ("units", "", self.units),
            ("transactions", "", self.transactions),
        ]
        for daily in self.last_30_days:
            figures.append(("daily_revenue", daily.day.isoformat(), daily.revenue))
            figures.append(("daily_units", daily.day.isoformat(), daily.units))
        figures += [("products_by_category", k, v) for k, v in self.products_by_category.items()]
        figures += [("products_by_brand", k, v) for k, v in self.products_by_brand.items()]
        return [
            {
                "company": self.company,
                "metric": metric,
                "dimension": dimension,
                "value": Decimal(value),
                "computed_at": self.computed_at,
            }
            for metric, dimension, value in figures
        ]

    def as_json(self) -> dict[str, Any]:
        """The cached document: JSON types only, money as exact strings."""
        return {
            "company": self.company,
            "computed_at": self.computed_at.isoformat(),
            "timezone": self.timezone,
            "today": self.today.isoformat(),
            "products": self.products,
            "stock_value": _money(self.stock_value),
            "revenue": _money(self.revenue),
            "units": self.units,
            "transactions": self.transactions,
            "last_30_days": [
                {"day": d.day.isoformat(), "revenue": _money(d.revenue), "units": d.units}
                for d in self.last_30_days
            ],
            "products_by_category": dict(sorted(self.products_by_category.items())),
            "products_by_brand": dict(sorted(self.products_by_brand.items())),
        }


@dataclass
class ComputedMetrics:
    """The figures of every company that could be computed, and why the others could not."""

    metrics: list[CompanyMetrics] = field(default_factory=list)
    failed: list[CompanyFailure] = field(default_factory=list)


@dataclass
class StoredMetrics:
    """Rows written, and the companies whose rows stayed as they were."""

    rows: int = 0
    failed: list[CompanyFailure] = field(default_factory=list)


def _money(value: Decimal) -> str:
    return str(cents(value))


def window_days(today: dt.date) -> list[dt.date]:
    """The `WINDOW_DAYS` days ending `today` inclusive, oldest first."""
    return [today - dt.timedelta(days=n) for n in range(WINDOW_DAYS - 1, -1, -1)]


def _daily_query(today: dt.date, timezone: str, dialect: str) -> Select:
    """Net revenue and units per company and window day (by index), days without sales absent.

    Day boundaries are local midnights converted to UTC here, so the SQL is the same on every
    dialect and DST days have their true length (23 or 25 hours).
    """
    days = window_days(today)
    bounds = day_bounds(days[0], days[-1], timezone)
    windows = union_all(
        *(
            select(
                literal(index, Integer).label("day_index"),
                literal(day.start_utc, TIMESTAMP).label("starts_at"),
                literal(day.end_utc, TIMESTAMP).label("ends_at"),
            )
            for index, day in enumerate(bounds)
        )
    ).subquery("windows")
    return (
        select(
            sales.c.company,
            windows.c.day_index,
            revenue(dialect),
            func.sum(sales.c.quantity),
        )
        .select_from(
            sales.join(
                windows,
                and_(sales.c.sold_at >= windows.c.starts_at, sales.c.sold_at < windows.c.ends_at),
            )
        )
        # The plain range lets PostgreSQL use the `sold_at` index before joining.
        .where(sales.c.sold_at >= bounds[0].start_utc, sales.c.sold_at < bounds[-1].end_utc)
        .group_by(sales.c.company, windows.c.day_index)
    )


def compute_metrics(
    conn: Connection, *, today: dt.date, timezone: str, computed_at: dt.datetime
) -> ComputedMetrics:
    """Metrics of every company with products or sales, sorted by company.

    `today` is a day in `timezone`; the daily series covers the 30 days ending `today`, every
    day present (0 when nothing was sold). Revenue is sum(quantity * unit_price), net of
    returns; products without a brand count under `NO_BRAND`. When a query fails for all (one
    company's sum overflows, say), the queries run again company by company, and a company
    that still fails is listed in `failed`.
    """
    try:
        # A savepoint: on PostgreSQL a failed statement would abort the caller's transaction.
        with conn.begin_nested():
            return ComputedMetrics(_compute(conn, today, timezone, computed_at, only=None))
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise
    result = ComputedMetrics()
    companies = union(select(products.c.company), select(sales.c.company))
    for company in sorted(conn.execute(companies).scalars()):
        try:
            with conn.begin_nested():
                result.metrics += _compute(conn, today, timezone, computed_at, company)
        except DBAPIError as exc:
            result.failed.append(company_failure(company, exc))
    return result


def _compute(
    conn: Connection,
    today: dt.date,
    timezone: str,
    computed_at: dt.datetime,
    only: str | None,
) -> list[CompanyMetrics]:
    """The metrics of the company `only`, or of every company (None)."""
    metrics: dict[str, CompanyMetrics] = {}

    def entry(company: str) -> CompanyMetrics:
        # Built from each query's rows: on PostgreSQL every statement sees the latest commits,
        # so a company imported between two statements must not be a KeyError.
        if company not in metrics:
            metrics[company] = CompanyMetrics(
                company=company, computed_at=computed_at, timezone=timezone, today=today
            )
        return metrics[company]

    def of(query: Select, company_column: ColumnElement[str]) -> Select:
        return query if only is None else query.where(company_column == only)

    dialect = conn.dialect.name
    for company, count, value in conn.execute(of(_stock_query(dialect), products.c.company)):
        entry(company).products = int(count)
        entry(company).stock_value = value
    for company, count, units, amount in conn.execute(of(_totals_query(dialect), sales.c.company)):
        entry(company).transactions = int(count)
        entry(company).units = int(units)
        entry(company).revenue = amount
    for attribute, query in _product_count_queries():
        for company, key, count in conn.execute(of(query, products.c.company)):
            getattr(entry(company), attribute)[key] = int(count)
    daily: dict[tuple[str, int], tuple[Decimal, int]] = {
        (company, index): (amount, int(units))
        for company, index, amount, units in conn.execute(
            of(_daily_query(today, timezone, dialect), sales.c.company)
        )
    }
    days = window_days(today)
    for company, figures in metrics.items():
        figures.last_30_days = [
            DailyFigures(day, *daily.get((company, index), (Decimal("0.00"), 0)))
            for index, day in enumerate(days)
        ]
    return [metrics[company] for company in sorted(metrics)]


def _stock_query(dialect: str) -> Select:
    """Products and stock value per company."""
    return select(
        products.c.company,
        func.count(),
        money_sum(dialect, products.c.unit_price * products.c.stock_quantity),
    ).group_by(products.c.company)


def _totals_query(dialect: str) -> Select:
    """Sales lines, units and net revenue per company, all time."""
    return select(
        sales.c.company, func.count(), func.sum(sales.c.quantity), revenue(dialect)
    ).group_by(sales.c.company)


def _product_count_queries() -> list[tuple[str, Select]]:
    """Products per company and category, and per company and brand (`NO_BRAND` when none)."""
    brand = func.coalesce(products.c.brand, NO_BRAND)
    return [
        (
            attribute,
            select(products.c.company, column, func.count()).group_by(products.c.company, column),
        )
        for attribute, column in (
            ("products_by_category", products.c.category),
            ("products_by_brand", brand),
        )
    ]


def store_metrics(engine: Engine, metrics: Sequence[CompanyMetrics]) -> StoredMetrics:
    """Replace each company's rows in `dashboard_metrics`, one company per transaction.

    A company whose rows fail keeps its previous rows and is listed in `failed`; the other
    companies are committed all the same.
    """
    result = StoredMetrics()
    for entry in metrics:
        rows = entry.rows()
        try:
            with engine.begin() as conn:
                conn.execute(
                    dashboard_metrics.delete().where(dashboard_metrics.c.company == entry.company)
                )
                conn.execute(dashboard_metrics.insert(), rows)
        except DBAPIError as exc:
            result.failed.append(company_failure(entry.company, exc))
        else:
            result.rows += len(rows)
    return result


def metrics_key(prefix: str, company: str) -> str:
    """The Redis key of one company's document."""
    return f"{prefix}metrics:{company}"


def companies_key(prefix: str) -> str:
    """The Redis key of the list of companies."""
    return f"{prefix}metrics:companies"


def cache_metrics(
    client: Redis, metrics: Sequence[CompanyMetrics], ttl_seconds: int, prefix: str
) -> list[str]:
    """Write every company's document and the company list, all expiring after `ttl_seconds`.

    One MULTI/EXEC transaction, so readers never see the list without its documents. Returns
    the keys written.
    """
    pipeline = client.pipeline(transaction=True)
    keys = []
    for entry in metrics:
        key = metrics_key(prefix, entry.company)
        pipeline.set(key, json.dumps(entry.as_json()), ex=ttl_seconds)
        keys.append(key)
    companies = sorted(m.company for m in metrics)
    pipeline.set(companies_key(prefix), json.dumps(companies), ex=ttl_seconds)
    keys.append(companies_key(prefix))
    pipeline.execute()
    return keys
