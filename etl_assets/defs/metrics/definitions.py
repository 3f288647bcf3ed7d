"""The metrics domain, assembled."""

import dagster as dg

from etl_assets.defs.calendar import Calendar
from etl_assets.defs.metrics.assets import build_dashboard_metrics, dashboard_metrics_job
from etl_assets.defs.metrics.schedules import build_dashboard_metrics_schedule


def defs(calendar: Calendar) -> dg.Definitions:
    """`dashboard_metrics`, its job and schedule in the calendar's timezone."""
    return dg.Definitions(
        assets=[build_dashboard_metrics(calendar)],
        jobs=[dashboard_metrics_job],
        schedules=[build_dashboard_metrics_schedule(calendar)],
    )
