"""Reports: the monthly sales report asset, its job and schedule, and the export job."""

from etl_assets.defs.calendar import Calendar, Domain
from etl_assets.defs.reports.assets import build_monthly_sales_report
from etl_assets.defs.reports.jobs import build_export_job, monthly_reports_job
from etl_assets.defs.reports.schedules import build_monthly_reports_schedule


def build_reports(calendar: Calendar) -> Domain:
    """The reports domain's definitions for the calendar."""
    return Domain(
        assets=[build_monthly_sales_report(calendar)],
        jobs=[monthly_reports_job, build_export_job(calendar)],
        schedules=[build_monthly_reports_schedule(calendar)],
    )
