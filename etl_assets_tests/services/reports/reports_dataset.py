"""A month of sales of two companies with the same keys (December 2025 in New York), and the
report's figures computed from them in Python."""

import datetime as dt
from collections import defaultdict
from decimal import Decimal
from zoneinfo import ZoneInfo

from sqlalchemy import Engine

from etl_assets.warehouse.schema import products, sales

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


def sale_row(company: str, tid: str, local: dt.datetime, sku: str, qty: int, price: str) -> dict:
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


def product_row(company: str, sku: str, name: str) -> dict:
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


def load_month(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            products.insert(),
            [product_row("acme", sku, name) for sku, name in NAMES.items()]
            + [product_row("globex", sku, OTHER_NAME) for sku in NAMES],
        )
        conn.execute(
            sales.insert(),
            [sale_row("acme", *row) for row in ROWS] + [sale_row("globex", *row) for row in OTHER],
        )


def expected_report(rows: list[tuple], names: dict[str, str]) -> dict:
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
