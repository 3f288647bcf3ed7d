"""Nightly `daily_sales`: at 01:00 in the calendar's timezone, the day that just ended."""

import dagster as dg

from etl_assets.defs.aggregates.jobs import daily_sales_job

# Built from the job's daily partitions: Dagster takes the timezone from them and requests the
# last complete day at each tick (none before the calendar's first day).
daily_sales_schedule = dg.build_schedule_from_partitioned_job(
    daily_sales_job,
    name="daily_sales_schedule",
    hour_of_day=1,
    minute_of_hour=0,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="At 01:00 (ETL_TIMEZONE) materialise daily_sales for the day before.",
)
