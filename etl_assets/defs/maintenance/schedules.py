"""Nightly maintenance: pull from the configured source at 02:00, clean up at 03:30."""

import dagster as dg

from etl_assets.defs.calendar import Calendar
from etl_assets.defs.maintenance.jobs import CleanupConfig, PullConfig, cleanup_job, pull_job

NOT_CONFIGURED = (
    "ETL_PULL_SOURCE is not set: set it to a directory of <company>/<file> exports inside "
    "ETL_PULL_ROOTS to pull from it daily at 02:00"
)


def build_maintenance_schedules(
    calendar: Calendar, *, pull_source: str | None = None, retention_days: int = 90
) -> list[dg.ScheduleDefinition]:
    """The daily pull and cleanup schedules in the calendar's timezone.

    `pull_source` (None: the pull schedule skips) and `retention_days` come from the
    environment, read in `definitions.py`.
    """

    @dg.schedule(
        name="pull_schedule",
        job=pull_job,
        cron_schedule="0 2 * * *",
        execution_timezone=calendar.timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Pull new exports from ETL_PULL_SOURCE into the inbox, daily at 02:00.",
    )
    def pull_schedule(_context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        """Request a pull of the configured source, or skip saying how to configure one."""
        if not pull_source:
            return dg.SkipReason(NOT_CONFIGURED)
        return dg.RunRequest(run_config=dg.RunConfig(ops={"pull": PullConfig(source=pull_source)}))

    @dg.schedule(
        name="cleanup_schedule",
        job=cleanup_job,
        cron_schedule="30 3 * * *",
        execution_timezone=calendar.timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Delete files and journal rows past ETL_RETENTION_DAYS, nightly at 03:30.",
    )
    def cleanup_schedule(_context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        """Request a forced cleanup with the configured retention."""
        config = CleanupConfig(retention_days=retention_days, force=True)
        return dg.RunRequest(run_config=dg.RunConfig(ops={"cleanup": config}))

    return [pull_schedule, cleanup_schedule]
