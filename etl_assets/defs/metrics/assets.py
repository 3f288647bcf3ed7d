"""The `dashboard_metrics` asset: per-company figures in the warehouse and, when set, Redis."""

import datetime as dt
from collections.abc import Sequence
from zoneinfo import ZoneInfo

import dagster as dg

from etl_assets.defs.aggregates.assets import companies_failure
from etl_assets.defs.calendar import Calendar
from etl_assets.defs.policies import (
    AGGREGATES_QUEUE,
    IO_RETRY,
    METRICS_GROUP,
    max_runtime,
    on_queue,
)
from etl_assets.defs.resources import RedisResource, WarehouseResource
from etl_assets.services.figures.metrics import (
    CompanyMetrics,
    cache_metrics,
    compute_metrics,
    store_metrics,
)

REFRESH_MINUTES = 5
# Two refresh intervals: one missed or slow tick does not empty the dashboard.
CACHE_TTL_SECONDS = 2 * REFRESH_MINUTES * 60
# The preview is for a glance; the table and the cache hold every company.
PREVIEW_COMPANIES = 50

COLUMN_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn("company", "text", description="Tenant"),
        dg.TableColumn(
            "metric", "text", description="e.g. revenue, daily_units, products_by_brand"
        ),
        dg.TableColumn(
            "dimension", "text", description="'' for plain figures, else day/category/brand"
        ),
        dg.TableColumn("value", "decimal(38,2)", description="The figure"),
        dg.TableColumn("computed_at", "timestamptz", description="When the refresh ran"),
    ]
)


def _preview(metrics: Sequence[CompanyMetrics]) -> str:
    lines = [
        "| company | products | stock value | revenue | units | transactions | revenue 30 d |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {m.company} | {m.products} | {m.stock_value:.2f} | {m.revenue:.2f} | {m.units} "
        f"| {m.transactions} | {m.revenue_last_30_days:.2f} |"
        for m in metrics[:PREVIEW_COMPANIES]
    ]
    if len(metrics) > PREVIEW_COMPANIES:
        lines.append(f"\n… and {len(metrics) - PREVIEW_COMPANIES} more companies")
    return "\n".join(lines)


def _metadata(
    metrics: Sequence[CompanyMetrics], rows: int, today: dt.date, cache: str
) -> dict[str, object]:
    return {
        "dagster/row_count": rows,
        "dagster/column_schema": COLUMN_SCHEMA,
        "companies": len(metrics),
        "products_total": sum(m.products for m in metrics),
        "stock_value_total": float(sum(m.stock_value for m in metrics)),
        "revenue_total": float(sum(m.revenue for m in metrics)),
        "units_total": sum(m.units for m in metrics),
        "transactions_total": sum(m.transactions for m in metrics),
        "revenue_last_30_days_total": float(sum(m.revenue_last_30_days for m in metrics)),
        "today": today.isoformat(),
        "cache": cache,
        "preview": dg.MetadataValue.md(_preview(metrics)),
    }


def build_dashboard_metrics(calendar: Calendar) -> dg.AssetsDefinition:
    """The asset, with "today" and the last-30-days window in the calendar's timezone."""

    @dg.asset(
        group_name=METRICS_GROUP,
        kinds={"sql", "redis"},
        deps=["products", "sales"],
        retry_policy=IO_RETRY,
        op_tags=on_queue(AGGREGATES_QUEUE),
    )
    def dashboard_metrics(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, redis: RedisResource
    ) -> dg.MaterializeResult:
        """Per-company dashboard figures: stored in `dashboard_metrics`, cached in Redis if set."""
        now = dt.datetime.now(dt.UTC)
        today = now.astimezone(ZoneInfo(calendar.timezone)).date()
        engine = warehouse.engine()
        with engine.connect() as conn:
            computed = compute_metrics(
                conn, today=today, timezone=calendar.timezone, computed_at=now
            )
        # Written after the reads are over: on SQLite, reading first and writing later in one
        # transaction fails outright if another writer commits in between.
        stored = store_metrics(engine, computed.metrics)
        unstored = {f.company for f in stored.failed}
        metrics = [m for m in computed.metrics if m.company not in unstored]
        client = redis.client()
        if client is None:
            cache = "Redis not configured"
        else:
            with client:
                keys = cache_metrics(client, metrics, CACHE_TTL_SECONDS, redis.key_prefix)
            cache = f"{len(keys)} keys under {redis.key_prefix}metrics:, TTL {CACHE_TTL_SECONDS} s"
        context.log.info(
            f"{len(metrics)} companies, {stored.rows} rows for {today} ({calendar.timezone}); "
            f"{cache}"
        )
        failed = sorted([*computed.failed, *stored.failed], key=lambda f: f.company)
        if failed:
            raise companies_failure("dashboard_metrics", failed)
        return dg.MaterializeResult(metadata=_metadata(metrics, stored.rows, today, cache))

    return dashboard_metrics


dashboard_metrics_job = dg.define_asset_job(
    "dashboard_metrics_job",
    selection=["dashboard_metrics"],
    description="Recompute the dashboard metrics of every company.",
    tags=max_runtime(300),
)
