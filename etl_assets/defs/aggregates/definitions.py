"""The aggregates domain, assembled."""

import dagster as dg

from etl_assets.defs.aggregates.assets import build_daily_sales
from etl_assets.defs.aggregates.jobs import build_rebuild_aggregates_job, daily_sales_job
from etl_assets.defs.aggregates.schedules import daily_sales_schedule
from etl_assets.defs.aggregates.sensors import build_daily_sales_refresh_sensor
from etl_assets.defs.calendar import Calendar


def defs(calendar: Calendar) -> dg.Definitions:
    """`daily_sales`, its jobs, refresh sensor and schedule for the calendar."""
    rebuild_job = build_rebuild_aggregates_job(calendar)
    return dg.Definitions(
        assets=[build_daily_sales(calendar)],
        jobs=[daily_sales_job, rebuild_job],
        sensors=[build_daily_sales_refresh_sensor(calendar, rebuild_job)],
        schedules=[daily_sales_schedule],
    )
