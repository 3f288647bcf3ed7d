"""The maintenance domain, assembled."""

import dagster as dg

from etl_assets.defs.calendar import Calendar
from etl_assets.defs.maintenance.alerts import run_failure_alert_sensor
from etl_assets.defs.maintenance.health import build_health_schedule, health_check_job
from etl_assets.defs.maintenance.jobs import cleanup_job, pull_job
from etl_assets.defs.maintenance.schedules import build_maintenance_schedules


def defs(
    calendar: Calendar, *, pull_source: str | None = None, retention_days: int = 90
) -> dg.Definitions:
    """Pull, cleanup and health check jobs with their schedules, and the alert sensor.

    `pull_source` (None: the pull schedule skips) and `retention_days` come from the
    environment, read in `etl_assets/definitions.py`.
    """
    return dg.Definitions(
        jobs=[pull_job, cleanup_job, health_check_job],
        schedules=[
            *build_maintenance_schedules(
                calendar, pull_source=pull_source, retention_days=retention_days
            ),
            build_health_schedule(calendar),
        ],
        sensors=[run_failure_alert_sensor],
    )
