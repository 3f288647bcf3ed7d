"""Monthly reports: on the 1st at 03:00 (calendar timezone), last month for every company."""

import datetime as dt
from zoneinfo import ZoneInfo

import dagster as dg

from etl_assets.defs.calendar import Calendar
from etl_assets.defs.partitions import companies
from etl_assets.defs.reports.jobs import monthly_reports_job
from etl_assets.defs.reports.partitions import COMPANY, MONTH


def build_monthly_reports_schedule(calendar: Calendar) -> dg.ScheduleDefinition:
    """On the 1st of each month, one report run per known company for the previous month."""
    zone = ZoneInfo(calendar.timezone)
    first_key = calendar.monthly().get_first_partition_key()

    @dg.schedule(
        name="monthly_reports_schedule",
        cron_schedule="0 3 1 * *",
        execution_timezone=calendar.timezone,
        job=monthly_reports_job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="On the 1st at 03:00 (ETL_TIMEZONE) write last month's report per company.",
    )
    def monthly_reports_schedule(
        context: dg.ScheduleEvaluationContext,
    ) -> list[dg.RunRequest] | dg.SkipReason:
        """The month before the scheduled time (not the evaluation time), per company."""
        local = context.scheduled_execution_time.astimezone(zone)
        month = (local.date().replace(day=1) - dt.timedelta(days=1)).replace(day=1).isoformat()
        # ISO dates compare as strings.
        if first_key is None or month < first_key:
            return dg.SkipReason(f"{month} is before the first partition {first_key}")
        names = sorted(context.instance.get_dynamic_partitions(companies.name))
        if not names:
            return dg.SkipReason("no companies yet: none has uploaded a file")
        requests = []
        for company in names:
            key = dg.MultiPartitionKey({MONTH: month, COMPANY: company})
            # The key names month and company, so a re-evaluated tick requests nothing new. Not
            # `etl/company`: that tag limits imports to one per company in the run queue, and a
            # company's imports must not wait behind its reports.
            requests.append(
                dg.RunRequest(
                    run_key=str(key),
                    partition_key=key,
                    tags={"etl/report_company": company, "etl/month": month[:7]},
                )
            )
        return requests

    return monthly_reports_schedule
