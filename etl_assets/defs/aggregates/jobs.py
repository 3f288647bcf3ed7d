"""Jobs: `daily_sales_job` (the asset, any partition range) and `rebuild_aggregates_job`."""

import datetime as dt

import dagster as dg
from pydantic import Field

from etl_assets.defs.aggregates.assets import (
    DAILY_SALES,
    companies_failure,
    companies_markdown,
    refresh_metadata,
)
from etl_assets.defs.calendar import Calendar
from etl_assets.defs.policies import AGGREGATES_QUEUE, IO_RETRY, max_runtime, on_queue
from etl_assets.defs.resources import WarehouseResource
from etl_assets.services.figures.aggregates import daily_sales_in_range, refresh_daily_sales

daily_sales_job = dg.define_asset_job(
    "daily_sales_job",
    selection=[DAILY_SALES],
    description="Materialise daily_sales for one day or a day range, in one run.",
    tags=max_runtime(1800),
)


class RebuildAggregatesConfig(dg.Config):
    """The day range to rebuild, and whether deleting is allowed."""

    start: str = Field(description="First day, YYYY-MM-DD (calendar timezone)")
    end: str = Field(description="Last day, YYYY-MM-DD, inclusive")
    force: bool = Field(
        default=False, description="Delete and recompute; without it, only report what would go"
    )

    def days(self) -> tuple[dt.date, dt.date]:
        """The range as dates; a malformed or reversed range fails the run, never retried."""
        try:
            first, last = dt.date.fromisoformat(self.start), dt.date.fromisoformat(self.end)
        except ValueError as exc:
            raise dg.Failure(
                f"start and end must be YYYY-MM-DD: {exc}", allow_retries=False
            ) from exc
        if last < first:
            raise dg.Failure(f"end {last} is before start {first}", allow_retries=False)
        return first, last


def rebuild_run_config(first: dt.date, last: dt.date, *, force: bool) -> dict[str, object]:
    """Run config of `rebuild_aggregates_job` for the inclusive day range."""
    config = {"start": first.isoformat(), "end": last.isoformat(), "force": force}
    return {"ops": {"rebuild_daily_sales": {"config": config}}}


def build_rebuild_aggregates_job(calendar: Calendar) -> dg.JobDefinition:
    """The destructive rebuild of `daily_sales` over a day range; a dry run unless forced."""

    @dg.op(
        out=dg.Out(dg.Nothing),
        tags={"etl/destructive": "true", **on_queue(AGGREGATES_QUEUE)},
        retry_policy=IO_RETRY,
    )
    def rebuild_daily_sales(
        context: dg.OpExecutionContext,
        config: RebuildAggregatesConfig,
        warehouse: WarehouseResource,
    ) -> dg.Output:
        """Without `force`, report the rows a rebuild would delete; with it, rebuild the range."""
        first, last = config.days()
        if not config.force:
            with warehouse.engine().connect() as conn:
                existing = daily_sales_in_range(conn, first, last)
            rows = sum(c.rows for c in existing)
            context.log.warning(
                f"dry run, nothing deleted: a rebuild of {first}..{last} would delete {rows} "
                f"daily_sales rows of {len(existing)} companies "
                f"({', '.join(f'{c.company}: {c.rows}' for c in existing) or 'none'}); "
                "launch again with force: true to rebuild"
            )
            return dg.Output(
                None,
                metadata={
                    "dry_run": True,
                    "first_day": first.isoformat(),
                    "last_day": last.isoformat(),
                    "would_delete_rows": rows,
                    "would_delete_companies": len(existing),
                    "would_delete": companies_markdown(existing),
                },
            )
        with warehouse.engine().begin() as conn:
            result = refresh_daily_sales(conn, first, last, calendar.timezone)
        context.log.info(
            f"rebuilt daily_sales {first}..{last}: {result.rows_deleted} rows deleted, "
            f"{result.rows_written} written"
        )
        if result.failed:
            raise companies_failure(f"daily_sales {first}..{last}", result.failed)
        return dg.Output(None, metadata={"dry_run": False, **refresh_metadata(result)})

    @dg.job(
        name="rebuild_aggregates_job",
        description=(
            "DESTRUCTIVE: delete and recompute daily_sales for every company from `start` to "
            "`end`. Without `force: true` it only reports what it would delete."
        ),
        tags={"etl/destructive": "true", **max_runtime(1800)},
    )
    def rebuild_aggregates_job() -> None:
        rebuild_daily_sales()

    return rebuild_aggregates_job
