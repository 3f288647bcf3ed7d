"""The calendar every time-partitioned asset and schedule shares."""

from dataclasses import dataclass

import dagster as dg


@dataclass(frozen=True)
class Calendar:
    """Timezone and first day of daily/monthly partitions, and the timezone of schedules."""

    timezone: str = "UTC"
    start: str = "2024-01-01"

    def daily(self) -> dg.DailyPartitionsDefinition:
        """One partition per calendar day in `timezone`."""
        return dg.DailyPartitionsDefinition(start_date=self.start, timezone=self.timezone)

    def monthly(self) -> dg.MonthlyPartitionsDefinition:
        """One partition per calendar month in `timezone`."""
        return dg.MonthlyPartitionsDefinition(start_date=self.start, timezone=self.timezone)
