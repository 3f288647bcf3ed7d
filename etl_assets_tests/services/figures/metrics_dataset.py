"""The fixed dataset the metrics are computed from (New York, 30 March 2025: the 30-day window
crosses the start of DST), and what writes it and reads the stored metrics back."""

import datetime as dt
from decimal import Decimal
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, select

from etl_assets.warehouse.schema import dashboard_metrics, products, sales

TZ = "America/New_York"  # DST starts 2025-03-09, inside the window
NY = ZoneInfo(TZ)
TODAY = dt.date(2025, 3, 30)
COMPUTED_AT = dt.datetime(2025, 3, 30, 16, 0, tzinfo=dt.UTC)
LOADED_AT = dt.datetime(2025, 3, 30, 15, 0, tzinfo=dt.UTC)

# (company, sku, category, brand, unit_price, stock_quantity)
PRODUCTS = [
    ("acme", "A1", "tools", "Bosch", "12.50", 4),
    ("acme", "A2", "tools", None, "0.99", 100),
    ("acme", "A3", "garden", "Bosch", "1000.00", 0),
    ("globex", "G1", "toys", "Acme", "5.00", 2),
]
# (company, transaction_id, sold_at in New York time, quantity, unit_price)
SALES = [
    ("acme", "day30-first-instant", dt.datetime(2025, 3, 1, 0, 0), 2, "10.00"),
    # Still 28 February in New York although already 1 March in UTC: outside the window.
    ("acme", "day31-last-instant", dt.datetime(2025, 2, 28, 23, 59, 59), 5, "1.00"),
    ("acme", "dst-day-late", dt.datetime(2025, 3, 9, 23, 30), 4, "0.25"),
    ("acme", "return", dt.datetime(2025, 3, 15, 12, 0), -1, "10.00"),
    ("acme", "today-last-instant", dt.datetime(2025, 3, 30, 23, 59, 59), 1, "3.50"),
    ("acme", "tomorrow", dt.datetime(2025, 3, 31, 0, 0), 7, "2.00"),
    ("globex", "g-today", dt.datetime(2025, 3, 30, 9, 0), 3, "5.00"),
    ("initech", "i-old", dt.datetime(2024, 1, 10, 9, 0), 2, "7.25"),
]


def insert_rows(engine: Engine, product_rows: list[tuple], sale_rows: list[tuple]) -> None:
    with engine.begin() as conn:
        if product_rows:
            conn.execute(
                products.insert(),
                [
                    {
                        "company": company,
                        "sku": sku,
                        "name": f"product {sku}",
                        "category": category,
                        "brand": brand,
                        "unit_price": Decimal(price),
                        "stock_quantity": stock,
                        "upload_id": "test",
                        "updated_at": LOADED_AT,
                    }
                    for company, sku, category, brand, price, stock in product_rows
                ],
            )
        if sale_rows:
            conn.execute(
                sales.insert(),
                [
                    {
                        "company": company,
                        "transaction_id": tid,
                        "sold_at": sold_at.replace(tzinfo=NY),
                        "sku": "A1",
                        "quantity": quantity,
                        "unit_price": Decimal(price),
                        "upload_id": "test",
                        "updated_at": LOADED_AT,
                    }
                    for company, tid, sold_at, quantity, price in sale_rows
                ],
            )


def stored_rows(engine: Engine) -> set[tuple[str, str, str, Decimal]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                dashboard_metrics.c.company,
                dashboard_metrics.c.metric,
                dashboard_metrics.c.dimension,
                dashboard_metrics.c.value,
            )
        ).all()
    return {tuple(row) for row in rows}


# Sales imported before quantities were bounded: 10^19 units in total.
OVERFLOWING_SALES = [
    ("huge", "h1", dt.datetime(2025, 3, 30, 9, 0), 5 * 10**18, "1.00"),
    ("huge", "h2", dt.datetime(2025, 3, 30, 10, 0), 5 * 10**18, "1.00"),
]
