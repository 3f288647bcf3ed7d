"""daily_sales benchmark: a 365-day backfill over 1M sales rows on PostgreSQL, as Dagster runs it.

One run creates a scratch database `etl_bench_<random>` on the local PostgreSQL server
(`ETL_BENCH_POSTGRES_URL`, default the `postgres` user on 127.0.0.1), loads 1M sales of four
companies spread over 2025 (`etl_assets.samples.sales_frame`) straight into `sales` with `COPY`,
then times what a UI backfill of all of 2025 launches with the single-run backfill policy: one
`dg.materialize` of `daily_sales` over the partition range, passed as the
`dagster/asset_partition_range_start`/`_end` run tags (one run, one ranged `INSERT ... SELECT`).
The database is dropped at the end, also when something fails.

The last line of output is machine readable: `bench-aggregates: backfill_365d_1m_s=<seconds>`.
"""

import datetime as dt
import io
import os
import sys
import time
import warnings

import dagster as dg
import psycopg
from psycopg import sql
from scratch_db import DEFAULT_URL, create_database, drop_database, libpq_url
from sqlalchemy import func, make_url, select

from etl_assets.defs.aggregates.assets import build_daily_sales
from etl_assets.defs.calendar import Calendar
from etl_assets.defs.resources import WarehouseResource
from etl_assets.samples import sales_frame
from etl_assets.warehouse.schema import daily_sales, make_engine

ROWS = 1_000_000
COMPANIES = ["acme", "globex", "initech", "umbrella"]
TARGET_SECONDS = 30.0
# sales_frame spreads sales over 2025 in UTC; a UTC calendar puts every one of them in range.
CALENDAR = Calendar(timezone="UTC", start="2025-01-01")
FIRST_DAY, LAST_DAY = "2025-01-01", "2025-12-31"
SALES_COLUMNS = [
    "company",
    "transaction_id",
    "sold_at",
    "sku",
    "quantity",
    "unit_price",
    "customer_id",
    "upload_id",
    "updated_at",
]


def load_sales(url: str) -> float:
    """COPY ROWS sales, split across COMPANIES, into `sales`; returns seconds."""
    started = time.perf_counter()
    statement = sql.SQL("COPY sales ({}) FROM STDIN (FORMAT csv)").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in SALES_COLUMNS)
    )
    now = dt.datetime.now(dt.UTC).isoformat()
    per_company = ROWS // len(COMPANIES)
    with psycopg.connect(libpq_url(url)) as conn:
        for n, company in enumerate(COMPANIES):
            frame = sales_frame(per_company, seed=n, start=n * per_company)
            frame.insert(0, "company", company)
            # sales_frame writes naive times; they are UTC here.
            frame["sold_at"] = frame["sold_at"] + "+00:00"
            frame["upload_id"] = f"{company}.bench"
            frame["updated_at"] = now
            buffer = io.StringIO()
            frame[SALES_COLUMNS].to_csv(buffer, header=False, index=False)
            with conn.cursor() as cursor, cursor.copy(statement) as copy:
                copy.write(buffer.getvalue())
        conn.commit()
        # What autovacuum would have done by the time anyone backfills.
        conn.execute("ANALYZE sales")
        conn.commit()
    return time.perf_counter() - started


def backfill(url: str) -> tuple[float, dg.ExecuteInProcessResult]:
    """One Dagster run over the whole year, as a single-run backfill launches it."""
    asset = build_daily_sales(CALENDAR)
    started = time.perf_counter()
    result = dg.materialize(
        [asset],
        resources={"warehouse": WarehouseResource(url=url)},
        # 365 materialisation events would each print a DEBUG line.
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        tags={
            "dagster/asset_partition_range_start": FIRST_DAY,
            "dagster/asset_partition_range_end": LAST_DAY,
        },
    )
    return time.perf_counter() - started, result


def check(url: str, result: dg.ExecuteInProcessResult) -> tuple[int, float]:
    """Fail loudly unless the run covered 365 partitions and counted every sale exactly once."""
    events = result.get_asset_materialization_events()
    if not result.success or len(events) != 365:
        raise RuntimeError(f"backfill failed or incomplete: {len(events)} partitions")
    engine = make_engine(url)
    with engine.connect() as conn:
        rows, transactions = conn.execute(
            select(func.count(), func.sum(daily_sales.c.transactions))
        ).one()
    engine.dispose()
    if transactions != ROWS:
        raise RuntimeError(f"daily_sales counts {transactions} transactions, expected {ROWS}")
    return int(rows), float(events[0].materialization.metadata["seconds"].value)


def main() -> int:
    # `backfill_policy` is beta in Dagster 1.13; the warning says nothing about this run.
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    admin_url = os.environ.get("ETL_BENCH_POSTGRES_URL", DEFAULT_URL)
    url = create_database(admin_url)
    try:
        print(f"scratch database {make_url(url).database}", flush=True)
        load_seconds = load_sales(url)
        print(f"loaded {ROWS:,} sales ({len(COMPANIES)} companies) in {load_seconds:.1f}s")
        seconds, result = backfill(url)
        rows, sql_seconds = check(url, result)
    finally:
        drop_database(admin_url, url)
    print(
        f"backfill {FIRST_DAY}..{LAST_DAY} (365 partitions, one run): {seconds:.2f}s wall "
        f"(refresh_daily_sales SQL {sql_seconds:.2f}s), {rows:,} daily_sales rows, "
        f"target <= {TARGET_SECONDS:.0f}s: {'ok' if seconds <= TARGET_SECONDS else 'MISSED'}"
    )
    print(f"bench-aggregates: backfill_365d_1m_s={seconds:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
