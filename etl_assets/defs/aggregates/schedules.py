"""Nightly `daily_sales`: at 01:00 in the calendar's timezone, the day that just ended."""

import datetime as dt
from zoneinfo import ZoneInfo

import dagster as dg

from etl_assets.defs.aggregates.jobs import daily_sales_job
from etl_assets.defs.calendar import Calendar


def build_daily_sales_schedule(calendar: Calendar) -> dg.ScheduleDefinition:
    """Daily at 01:00 (calendar timezone), materialise yesterday's `daily_sales` partition."""
    zone = ZoneInfo(calendar.timezone)
    first_key = calendar.daily().get_first_partition_key()

    @dg.schedule(
        name="daily_sales_schedule",
        cron_schedule="0 1 * * *",
        execution_timezone=calendar.timezone,
        job=daily_sales_job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="At 01:00 (ETL_TIMEZONE) materialise daily_sales for the day before.",
    )
    def daily_sales_schedule(
        context: dg.ScheduleEvaluationContext,
    ) -> dg.RunRequest | dg.SkipReason:
        """Yesterday relative to the scheduled time (not the evaluation time), in the calendar."""
        local = context.scheduled_execution_time.astimezone(zone)
        yesterday = (local.date() - dt.timedelta(days=1)).isoformat()
        # ISO dates compare as strings.
        if first_key is None or yesterday < first_key:
            return dg.SkipReason(f"{yesterday} is before the first partition {first_key}")
        return dg.RunRequest(run_key=yesterday, partition_key=yesterday)

    return daily_sales_schedule
