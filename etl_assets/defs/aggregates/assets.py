"""The `daily_sales` asset: per company and local day, recomputed in the warehouse."""

import datetime as dt
from collections.abc import Sequence

import dagster as dg

from etl_assets.defs.calendar import Calendar
from etl_assets.defs.policies import AGGREGATES_GROUP, AGGREGATES_QUEUE, IO_RETRY, on_queue
from etl_assets.defs.resources import WarehouseResource
from etl_assets.services.figures.aggregates import (
    CompanyDays,
    CompanyFailure,
    DailySalesResult,
    refresh_daily_sales,
)

DAILY_SALES = dg.AssetKey("daily_sales")
PREVIEW_COMPANIES = 10

COLUMN_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn("company", "text", description="Tenant"),
        dg.TableColumn("day", "date", description="Calendar day in the calendar's timezone"),
        dg.TableColumn("revenue", "decimal(38,2)", description="Sum of quantity × unit price"),
        dg.TableColumn("units", "bigint", description="Sum of quantity (returns subtract)"),
        dg.TableColumn("transactions", "integer", description="Sales rows, returns included"),
        dg.TableColumn("returns", "integer", description="Rows with a negative quantity"),
        dg.TableColumn("distinct_products", "integer", description="Distinct SKUs sold"),
    ]
)


def companies_markdown(rows: list[CompanyDays]) -> dg.MetadataValue:
    """A markdown table of per-company rows, the largest revenue first, capped for the UI."""
    ranked = sorted(rows, key=lambda r: (-r.revenue, r.company))
    lines = ["| company | rows | first day | last day | revenue |", "|---|---:|---|---|---:|"]
    lines += [
        f"| {r.company} | {r.rows} | {r.first_day} | {r.last_day} | {r.revenue} |"
        for r in ranked[:PREVIEW_COMPANIES]
    ]
    if len(ranked) > PREVIEW_COMPANIES:
        lines.append(f"| … {len(ranked) - PREVIEW_COMPANIES} more | | | | |")
    return dg.MetadataValue.md("\n".join(lines))


def companies_failure(what: str, failed: Sequence[CompanyFailure]) -> dg.Failure:
    """The step's failure once every other company was written: names the failed companies.

    Not retried: a retry would recompute every company only to hit the same figures again.
    """
    count = f"{len(failed)} {'company' if len(failed) == 1 else 'companies'}"
    names = ", ".join(f.company for f in failed[:PREVIEW_COMPANIES])
    if len(failed) > PREVIEW_COMPANIES:
        names += f" and {len(failed) - PREVIEW_COMPANIES} more"
    return dg.Failure(
        description=f"{what} not refreshed for {count} (the others were written): {names}",
        metadata={f.company: f.error for f in failed[:PREVIEW_COMPANIES]},
        allow_retries=False,
    )


def refresh_metadata(result: DailySalesResult) -> dict[str, object]:
    """Materialisation (or rebuild) metadata: volumes the UI plots and a per-company preview."""
    return {
        "dagster/row_count": result.rows_written,
        "first_day": result.first_day.isoformat(),
        "last_day": result.last_day.isoformat(),
        "days": result.days,
        "timezone": result.timezone,
        "companies": len(result.written),
        "revenue": float(result.revenue),
        "units": result.units,
        "transactions": result.transactions,
        "returns": result.returns,
        "rows_deleted": result.rows_deleted,
        "seconds": round(result.seconds, 3),
        "preview": companies_markdown(result.written),
    }


def build_daily_sales(calendar: Calendar) -> dg.AssetsDefinition:
    """The `daily_sales` asset, one partition per day of the calendar."""

    @dg.asset(
        name=DAILY_SALES.path[0],
        partitions_def=calendar.daily(),
        # A backfill of any length is one run and one ranged statement, not a run per day.
        backfill_policy=dg.BackfillPolicy.single_run(),
        # Lineage only: a day's figures read the `sales` table of every company.
        deps=[dg.AssetDep("sales", partition_mapping=dg.AllPartitionMapping())],
        group_name=AGGREGATES_GROUP,
        kinds={"sql"},
        # On the definition, not on each event: a 365-day backfill writes 365 events.
        metadata={"dagster/column_schema": COLUMN_SCHEMA},
        retry_policy=IO_RETRY,
        op_tags=on_queue(AGGREGATES_QUEUE),
    )
    def daily_sales(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource
    ) -> dg.MaterializeResult:
        """Revenue, units, transactions, returns and distinct products per company and day."""
        window = context.partition_time_window
        # The window is in the calendar's timezone and its end is the next day's midnight.
        first_day, last_day = window.start.date(), window.end.date() - dt.timedelta(days=1)
        with warehouse.engine().begin() as conn:
            result = refresh_daily_sales(conn, first_day, last_day, calendar.timezone)
        context.log.info(
            f"daily_sales {first_day}..{last_day} ({result.days} days, {calendar.timezone}): "
            f"{result.rows_deleted} rows deleted, {result.rows_written} written, "
            f"revenue {result.revenue} in {result.seconds:.2f}s"
        )
        if result.failed:
            raise companies_failure(f"daily_sales {first_day}..{last_day}", result.failed)
        return dg.MaterializeResult(metadata=refresh_metadata(result))

    return daily_sales
