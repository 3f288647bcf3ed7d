"""The daily_sales schedule: yesterday's Madrid day, nothing before the calendar."""

import datetime as dt
from zoneinfo import ZoneInfo

import dagster as dg
import pytest

from etl_assets.defs.aggregates import definitions as aggregates
from etl_assets.defs.resources import WarehouseResource
from etl_assets_tests.services.figures.aggregates_dataset import CALENDAR, MADRID, UTC


def _schedule() -> dg.ScheduleDefinition:
    """The schedule as the code location resolves it, against the calendar's partitions."""
    defs = dg.Definitions.merge(
        aggregates.defs(CALENDAR),
        dg.Definitions(resources={"warehouse": WarehouseResource(url="sqlite://")}),
    )
    return defs.resolve_schedule_def("daily_sales_schedule")


@pytest.mark.parametrize(
    ("scheduled", "partition"),
    [
        (dt.datetime(2025, 1, 11, 1, tzinfo=ZoneInfo(MADRID)), "2025-01-10"),
        (dt.datetime(2025, 3, 1, 1, tzinfo=ZoneInfo(MADRID)), "2025-02-28"),  # month boundary
        (dt.datetime(2024, 3, 1, 1, tzinfo=ZoneInfo(MADRID)), "2024-02-29"),  # leap day
        (dt.datetime(2025, 1, 1, 1, tzinfo=ZoneInfo(MADRID)), "2024-12-31"),  # year boundary
        # The same instant given in UTC (still the previous day there) names the Madrid day.
        (dt.datetime(2025, 1, 1, 0, tzinfo=UTC), "2024-12-31"),
        (dt.datetime(2025, 6, 30, 23, tzinfo=UTC), "2025-06-30"),  # 01:00 CEST on July 1
    ],
)
def test_schedule_materialises_yesterday(scheduled: dt.datetime, partition: str) -> None:
    schedule = _schedule()

    request = schedule(dg.build_schedule_context(scheduled_execution_time=scheduled))

    assert isinstance(request, dg.RunRequest)
    assert request.partition_key == partition
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("0 1 * * *", MADRID)
    assert schedule.job_name == "daily_sales_job"


def test_schedule_skips_days_before_the_calendar() -> None:
    schedule = _schedule()
    scheduled = dt.datetime(2024, 1, 1, 1, tzinfo=ZoneInfo(MADRID))

    result = schedule(dg.build_schedule_context(scheduled_execution_time=scheduled))

    assert isinstance(result, dg.SkipReason)
