"""Dashboard metrics: the asset, its job and its schedule."""

from etl_assets.defs.calendar import Calendar, Domain
from etl_assets.defs.metrics.assets import build_dashboard_metrics, dashboard_metrics_job
from etl_assets.defs.metrics.schedules import build_dashboard_metrics_schedule


def build_metrics(calendar: Calendar) -> Domain:
    """The metrics domain for the calendar's timezone."""
    return Domain(
        assets=[build_dashboard_metrics(calendar)],
        jobs=[dashboard_metrics_job],
        schedules=[build_dashboard_metrics_schedule(calendar)],
    )
