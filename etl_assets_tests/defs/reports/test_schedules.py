"""The monthly reports schedule: last month for every company, skipped when there is none."""

import datetime as dt

import dagster as dg
import pytest

from etl_assets.defs.calendar import Calendar
from etl_assets.defs.reports.assets import build_monthly_sales_report
from etl_assets.defs.reports.schedules import build_monthly_reports_schedule


def _schedule_requests(
    calendar: Calendar, instance: dg.DagsterInstance, at: dt.datetime
) -> list[dg.RunRequest] | dg.SkipReason:
    schedule = build_monthly_reports_schedule(calendar)
    with dg.build_schedule_context(instance=instance, scheduled_execution_time=at) as context:
        return schedule(context)


@pytest.mark.parametrize(
    ("timezone", "at", "month"),
    [
        ("UTC", dt.datetime(2026, 1, 1, 3, tzinfo=dt.UTC), "2025-12-01"),
        ("UTC", dt.datetime(2025, 3, 1, 3, tzinfo=dt.UTC), "2025-02-01"),
        # 03:00 on 1 January in New York is 08:00 UTC; in Tokyo, 18:00 UTC the day before.
        ("America/New_York", dt.datetime(2026, 1, 1, 8, tzinfo=dt.UTC), "2025-12-01"),
        ("Asia/Tokyo", dt.datetime(2025, 12, 31, 18, tzinfo=dt.UTC), "2025-12-01"),
    ],
)
def test_schedule_requests_last_month_for_every_company(
    instance: dg.DagsterInstance, timezone: str, at: dt.datetime, month: str
) -> None:
    instance.add_dynamic_partitions("companies", ["globex", "acme"])
    calendar = Calendar(timezone=timezone, start="2024-01-01")

    first = _schedule_requests(calendar, instance, at)
    again = _schedule_requests(calendar, instance, at)

    expected = [dg.MultiPartitionKey({"month": month, "company": c}) for c in ("acme", "globex")]
    assert [r.partition_key for r in first] == expected
    assert [r.run_key for r in first] == [str(k) for k in expected]
    assert [r.run_key for r in again] == [r.run_key for r in first]
    assert [r.tags["etl/report_company"] for r in first] == ["acme", "globex"]
    assert all("etl/company" not in r.tags for r in first), "the import concurrency tag"
    partitions = build_monthly_sales_report(calendar).partitions_def
    with dg.partition_loading_context(effective_dt=at, dynamic_partitions_store=instance):
        assert all(partitions.has_partition_key(k) for k in expected)


def test_schedule_skips_without_companies_or_before_the_first_month(
    instance: dg.DagsterInstance,
) -> None:
    at = dt.datetime(2026, 1, 1, 3, tzinfo=dt.UTC)

    empty = _schedule_requests(Calendar(), instance, at)
    instance.add_dynamic_partitions("companies", ["acme"])
    early = _schedule_requests(Calendar(start="2026-01-01"), instance, at)

    assert isinstance(empty, dg.SkipReason)
    assert "no companies" in empty.skip_message
    assert isinstance(early, dg.SkipReason)
    assert "2025-12-01 is before the first partition 2026-01-01" in early.skip_message
