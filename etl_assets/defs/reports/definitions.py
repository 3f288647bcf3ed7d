"""The reports domain, assembled."""

import dagster as dg

from etl_assets.defs.calendar import Calendar
from etl_assets.defs.reports.assets import build_monthly_sales_report
from etl_assets.defs.reports.jobs import build_export_job, monthly_reports_job
from etl_assets.defs.reports.schedules import build_monthly_reports_schedule


def defs(calendar: Calendar) -> dg.Definitions:
    """The monthly report, its job and schedule, and the export job, for the calendar."""
    return dg.Definitions(
        assets=[build_monthly_sales_report(calendar)],
        jobs=[monthly_reports_job, build_export_job(calendar)],
        schedules=[build_monthly_reports_schedule(calendar)],
    )
