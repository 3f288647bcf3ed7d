"""Sales of two companies around 10-12 January 2025, with their daily figures for Madrid days
worked out by hand, and what loads and reads them (the daily_sales service and Dagster tests)."""

import datetime as dt
import re
from decimal import Decimal

from sqlalchemy import Engine, select

from etl_assets.defs.calendar import Calendar
from etl_assets.warehouse.schema import daily_sales, sales

MADRID = "Europe/Madrid"
CALENDAR = Calendar(timezone=MADRID, start="2024-01-01")
UTC = dt.UTC
D = dt.date


def utc(day: int, hour: int, minute: int = 0, second: int = 0) -> dt.datetime:
    """A January 2025 instant in UTC (Madrid is UTC+1 then)."""
    return dt.datetime(2025, 1, day, hour, minute, second, tzinfo=UTC)


# (company, transaction_id, sold_at UTC, sku, quantity, unit_price)
SALES = [
    ("acme", "A1", utc(10, 9), "SKU-A", 2, 10.50),
    ("acme", "A2", utc(10, 12), "SKU-B", 1, 5.25),
    ("acme", "A3", utc(10, 15), "SKU-A", -1, 10.50),  # a return
    ("acme", "A4", utc(10, 22, 30), "SKU-C", 3, 2.10),  # 23:30 in Madrid: still Jan 10
    ("acme", "A5", utc(10, 23, 30), "SKU-A", 1, 10.50),  # 00:30 in Madrid: Jan 11
    ("acme", "A6", utc(12, 10), "SKU-B", 4, 5.25),
    ("acme", "A7", utc(12, 23), "SKU-C", 7, 2.10),  # exactly Jan 13 00:00 in Madrid
    ("globex", "G0", utc(9, 22, 59, 59), "SKU-X", 9, 3.33),  # Jan 9 23:59:59 in Madrid
    ("globex", "G1", utc(10, 8), "SKU-A", 5, 1.99),
    ("globex", "G2", utc(11, 13), "SKU-X", -2, 3.33),  # only a return that day
    ("globex", "G3", utc(9, 23, 15), "SKU-X", 1, 3.33),  # Jan 10 00:15 in Madrid
]

# Worked out by hand for Madrid days Jan 10-12:
# (company, day) -> (revenue, units, transactions, returns, distinct_products)
EXPECTED = {
    # A1 21.00 + A2 5.25 - A3 10.50 + A4 6.30; SKUs A, B, C
    ("acme", D(2025, 1, 10)): (Decimal("22.05"), 5, 4, 1, 3),
    ("acme", D(2025, 1, 11)): (Decimal("10.50"), 1, 1, 0, 1),  # A5
    ("acme", D(2025, 1, 12)): (Decimal("21.00"), 4, 1, 0, 1),  # A6; A7 is Jan 13
    ("globex", D(2025, 1, 10)): (Decimal("13.28"), 6, 2, 0, 2),  # G3 3.33 + G1 9.95
    ("globex", D(2025, 1, 11)): (Decimal("-6.66"), -2, 1, 1, 1),  # G2
    # globex has no sales on Jan 12: no row
}
FIRST, LAST = D(2025, 1, 10), D(2025, 1, 12)


def load_sales(engine: Engine, rows: list[tuple] = SALES) -> None:
    now = dt.datetime.now(UTC)
    records = [
        {
            "company": company,
            "transaction_id": tid,
            "sold_at": sold_at,
            "sku": sku,
            "quantity": quantity,
            "unit_price": price,
            "upload_id": "test",
            "updated_at": now,
        }
        for company, tid, sold_at, sku, quantity, price in rows
    ]
    with engine.begin() as conn:
        conn.execute(sales.insert(), records)


def insert_daily(engine: Engine, company: str, day: dt.date, revenue: str = "1.00") -> None:
    with engine.begin() as conn:
        conn.execute(
            daily_sales.insert().values(
                company=company,
                day=day,
                revenue=float(revenue),
                units=1,
                transactions=1,
                returns=0,
                distinct_products=1,
            )
        )


def read_daily(engine: Engine) -> dict[tuple[str, dt.date], tuple[Decimal, int, int, int, int]]:
    with engine.connect() as conn:
        return {
            (company, day): (Decimal(revenue).quantize(Decimal("0.01")), *rest)
            for company, day, revenue, *rest in conn.execute(select(daily_sales))
        }


# Sales imported before quantities were bounded: 10^19 units do not fit `units` (BIGINT), and
# SQLite's SUM of integers raises "integer overflow".
OVERFLOWING = [
    ("huge", "H1", utc(10, 12), "SKU-H", 5 * 10**18, Decimal("1.00")),
    ("huge", "H2", utc(10, 13), "SKU-H", 5 * 10**18, Decimal("1.00")),
]
OVERFLOW_ERROR = re.compile("integer overflow|bigint out of range")
