"""Report partitions: one per calendar month and company."""

import dagster as dg

from etl_assets.defs.calendar import Calendar
from etl_assets.defs.partitions import companies

MONTH = "month"
COMPANY = "company"


def monthly_company_partitions(calendar: Calendar) -> dg.MultiPartitionsDefinition:
    """Months of the calendar crossed with the known companies."""
    return dg.MultiPartitionsDefinition({MONTH: calendar.monthly(), COMPANY: companies})
