"""The dashboard metrics schedule."""

import datetime as dt

import dagster as dg
import pytest

from etl_assets.defs.calendar import Calendar
from etl_assets.defs.metrics import definitions as metrics
from etl_assets_tests.services.figures.metrics_dataset import NY, TZ


@pytest.mark.parametrize(
    ("timezone", "scheduled"),
    [
        ("UTC", dt.datetime(2025, 3, 30, 12, 5, tzinfo=dt.UTC)),
        (TZ, dt.datetime(2025, 3, 9, 3, 0, tzinfo=NY)),
    ],
)
def test_schedule_requests_the_metrics_job(timezone: str, scheduled: dt.datetime) -> None:
    [schedule] = metrics.defs(Calendar(timezone=timezone)).schedules
    context = dg.build_schedule_context(scheduled_execution_time=scheduled)

    [request] = schedule.evaluate_tick(context).run_requests or []

    assert schedule.name == "dashboard_metrics_schedule"
    assert schedule.job_name == "dashboard_metrics_job"
    assert schedule.cron_schedule == "*/5 * * * *"
    assert schedule.execution_timezone == timezone
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert request.run_config == {}
    assert request.tags == {"dagster/schedule_name": "dashboard_metrics_schedule"}
    assert request.job_name is None  # i.e. the schedule's own job
