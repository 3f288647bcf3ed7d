"""The dashboard metrics refresh, every five minutes."""

import dagster as dg

from etl_assets.defs.calendar import Calendar
from etl_assets.defs.metrics.assets import REFRESH_MINUTES, dashboard_metrics_job


def build_dashboard_metrics_schedule(calendar: Calendar) -> dg.ScheduleDefinition:
    """`dashboard_metrics_job` every `REFRESH_MINUTES` minutes, running by default (as Beat did)."""
    return dg.ScheduleDefinition(
        name="dashboard_metrics_schedule",
        job=dashboard_metrics_job,
        cron_schedule=f"*/{REFRESH_MINUTES} * * * *",
        execution_timezone=calendar.timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Refresh the dashboard metrics (warehouse and Redis cache).",
    )
