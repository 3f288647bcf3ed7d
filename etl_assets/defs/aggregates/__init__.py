"""Aggregates: the `daily_sales` asset, its job, refresh sensor and schedule, and the rebuild."""

from etl_assets.defs.aggregates.assets import build_daily_sales
from etl_assets.defs.aggregates.jobs import build_rebuild_aggregates_job, daily_sales_job
from etl_assets.defs.aggregates.schedules import build_daily_sales_schedule
from etl_assets.defs.aggregates.sensors import build_daily_sales_refresh_sensor
from etl_assets.defs.calendar import Calendar, Domain


def build_aggregates(calendar: Calendar) -> Domain:
    """The aggregates domain's definitions for the calendar."""
    rebuild_job = build_rebuild_aggregates_job(calendar)
    return Domain(
        assets=[build_daily_sales(calendar)],
        jobs=[daily_sales_job, rebuild_job],
        sensors=[build_daily_sales_refresh_sensor(calendar, rebuild_job)],
        schedules=[build_daily_sales_schedule(calendar)],
    )
