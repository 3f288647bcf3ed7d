"""Warehouse engine behaviour that the import path relies on."""

import datetime as dt
import sqlite3
from decimal import Decimal
from pathlib import Path

from sqlalchemy import Column, MetaData, Numeric, Table, func, inspect, select

from etl_assets.services.imports import journal
from etl_assets.warehouse.schema import (
    create_schema,
    daily_sales,
    dashboard_metrics,
    lock_for_writing,
    make_engine,
    products,
    uploads,
)

NEW_COLUMNS = ("dropped_at", "size_bytes", "attempts", "days_touched")


def test_sqlite_readers_are_not_blocked_by_a_writer(tmp_path: Path):
    """The sensor reads the journal while an import holds the write lock (WAL, deferred BEGIN)."""
    engine = make_engine(f"sqlite:///{tmp_path}/w.db")
    create_schema(engine)
    with engine.begin() as writer:
        lock_for_writing(writer)
        with engine.connect() as reader:
            assert reader.execute(select(func.count()).select_from(uploads)).scalar_one() == 0
    engine.dispose()


def test_sqlite_lock_for_writing_excludes_other_writers(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path}/w.db")
    create_schema(engine)
    probe = sqlite3.connect(tmp_path / "w.db", timeout=0, isolation_level=None)
    with engine.begin() as writer:
        lock_for_writing(writer)
        try:
            probe.execute("BEGIN IMMEDIATE")
            locked = False
            probe.execute("ROLLBACK")
        except sqlite3.OperationalError as exc:
            locked = "locked" in str(exc)
    assert locked
    probe.execute("BEGIN IMMEDIATE")  # released at commit
    probe.execute("ROLLBACK")
    probe.close()
    engine.dispose()


def test_a_warehouse_created_before_the_batch_columns_gets_them(warehouse_url: str) -> None:
    """Columns added to `uploads` later are added by the same idempotent setup, and rows
    journalled before keep working (no attempts yet, imported in received order)."""
    engine = make_engine(warehouse_url)
    old = MetaData()
    Table(
        "uploads",
        old,
        *[
            Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
            for c in uploads.columns
            if c.name not in NEW_COLUMNS
        ],
    )
    old.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            old.tables["uploads"]
            .insert()
            .values(
                upload_id="acme.1",
                company="acme",
                original_name="p.csv",
                kind="products",
                status="received",
                received_at=dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
            )
        )

    create_schema(engine)
    create_schema(engine)  # again, as every process does on start

    columns = {c["name"] for c in inspect(engine).get_columns("uploads")}
    assert set(NEW_COLUMNS) <= columns
    with engine.connect() as conn:
        [record] = journal.unfinished(conn, limit=10)
    assert (record.upload_id, record.attempts, record.dropped_at) == ("acme.1", 0, None)
    engine.dispose()


def test_a_postgresql_warehouse_with_narrow_decimals_gets_them_widened(pg_url: str) -> None:
    """Warehouses created when `daily_sales.revenue` was decimal(14,2) and
    `dashboard_metrics.value` decimal(20,2) get decimal(38,2), rows kept; nothing is narrowed."""
    engine = make_engine(pg_url)
    old_types = {
        ("daily_sales", "revenue"): Numeric(14, 2),
        ("dashboard_metrics", "value"): Numeric(20, 2),
        ("products", "unit_price"): Numeric(20, 4),  # wider than today's: left alone
    }
    old = MetaData()
    for table in (daily_sales, dashboard_metrics, products):
        Table(
            table.name,
            old,
            *[
                Column(
                    c.name,
                    old_types.get((table.name, c.name), c.type),
                    primary_key=c.primary_key,
                    nullable=c.nullable,
                )
                for c in table.columns
            ],
        )
    old.create_all(engine)
    day = dt.date(2025, 1, 10)
    row = {"company": "acme", "day": day, "units": 1, "transactions": 1, "returns": 0}
    with engine.begin() as conn:
        conn.execute(
            daily_sales.insert(),
            [{**row, "revenue": Decimal("9999999999.99"), "distinct_products": 1}],
        )

    create_schema(engine)
    create_schema(engine)  # again, as every process does on start

    types = {
        (table, c["name"]): (c["type"].precision, c["type"].scale)
        for table in ("daily_sales", "dashboard_metrics", "products")
        for c in inspect(engine).get_columns(table)
        if isinstance(c["type"], Numeric)
    }
    assert types == {
        ("daily_sales", "revenue"): (38, 2),
        ("dashboard_metrics", "value"): (38, 2),
        ("products", "unit_price"): (20, 4),
    }
    huge = Decimal("9" * 36 + ".99")
    with engine.begin() as conn:
        conn.execute(
            daily_sales.insert(),
            [{**row, "company": "huge", "revenue": huge, "distinct_products": 1}],
        )
        revenues = dict(conn.execute(select(daily_sales.c.company, daily_sales.c.revenue)).all())
    assert revenues == {"acme": Decimal("9999999999.99"), "huge": huge}
    engine.dispose()
