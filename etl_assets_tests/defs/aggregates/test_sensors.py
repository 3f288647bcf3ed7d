"""The daily_sales refresh sensor: touched days as ranges, once, and the runs it requests."""

import datetime as dt
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
from sqlalchemy import Engine

from etl_assets.defs.aggregates import definitions as aggregates
from etl_assets.defs.aggregates.jobs import build_rebuild_aggregates_job
from etl_assets.defs.aggregates.sensors import (
    RANGE_END_TAG,
    RANGE_START_TAG,
    build_daily_sales_refresh_sensor,
    contiguous_ranges,
)
from etl_assets.defs.calendar import Calendar
from etl_assets_tests.services.figures.aggregates_dataset import (
    CALENDAR,
    EXPECTED,
    MADRID,
    D,
    read_daily,
)


@pytest.mark.parametrize(
    ("days", "ranges"),
    [
        ([], []),
        ([D(2025, 1, 5)], [(D(2025, 1, 5), D(2025, 1, 5))]),
        (
            [D(2025, 2, 1), D(2025, 1, 31), D(2025, 1, 30), D(2025, 1, 31)],
            [(D(2025, 1, 30), D(2025, 2, 1))],
        ),
        (
            [D(2024, 12, 31), D(2025, 1, 1), D(2025, 1, 3), D(2025, 1, 5), D(2025, 1, 4)],
            [(D(2024, 12, 31), D(2025, 1, 1)), (D(2025, 1, 3), D(2025, 1, 5))],
        ),
    ],
)
def test_contiguous_ranges(days: list[dt.date], ranges: list[tuple[dt.date, dt.date]]) -> None:
    assert contiguous_ranges(days) == ranges


def _sales_imported(instance: dg.DagsterInstance, company: str, metadata: dict) -> None:
    """What an import batch records: a `sales` materialisation of the company's partition."""
    if not instance.has_dynamic_partition("companies", company):
        instance.add_dynamic_partitions("companies", [company])
    instance.report_runless_asset_event(
        dg.AssetMaterialization(asset_key="sales", partition=company, metadata=metadata)
    )


def _touched(*days: str) -> dict[str, dg.MetadataValue]:
    return {"days_touched": dg.MetadataValue.json(list(days))}


def _tick(instance: dg.DagsterInstance, cursor: str | None) -> dg.SensorResult:
    sensor = build_daily_sales_refresh_sensor(CALENDAR, build_rebuild_aggregates_job(CALENDAR))
    return sensor(dg.build_sensor_context(instance=instance, cursor=cursor))


def _requested(result: dg.SensorResult) -> list[tuple[str, str]]:
    """Each `daily_sales_job` request as its (first, last) partition key."""
    return [
        (r.partition_key, r.partition_key)
        if r.partition_key
        else (r.tags[RANGE_START_TAG], r.tags[RANGE_END_TAG])
        for r in result.run_requests or []
        if r.job_name == "daily_sales_job"
    ]


def _rebuilds(result: dg.SensorResult) -> list[dict]:
    """Each `rebuild_aggregates_job` request's op config."""
    return [
        r.run_config["ops"]["rebuild_daily_sales"]["config"]
        for r in result.run_requests or []
        if r.job_name == "rebuild_aggregates_job"
    ]


def test_sensor_requests_the_touched_days_as_ranges_once(instance: dg.DagsterInstance) -> None:
    tomorrow = (dt.datetime.now(ZoneInfo(MADRID)).date() + dt.timedelta(days=1)).isoformat()
    _sales_imported(instance, "acme", _touched("2025-01-11", "2025-01-10"))
    _sales_imported(
        instance,
        "globex",
        # 2023-12-30/31 are before the calendar's start; tomorrow has no partition yet.
        _touched("2025-01-12", "2025-01-11", "2025-01-20", "2023-12-31", "2023-12-30", tomorrow),
    )

    first = _tick(instance, None)

    assert _requested(first) == [("2025-01-10", "2025-01-12"), ("2025-01-20", "2025-01-20")]
    # No partition holds them: the rebuild job, which takes any range, refreshes them.
    assert _rebuilds(first) == [{"start": "2023-12-30", "end": "2023-12-31", "force": True}]
    ranged, single, _rebuild = first.run_requests
    assert ranged.partition_key is None
    assert (single.partition_key, single.tags) == ("2025-01-20", {})
    assert len({r.run_key for r in first.run_requests}) == 3
    assert all(first.cursor in r.run_key for r in first.run_requests)

    second = _tick(instance, first.cursor)
    assert (second.run_requests or [], second.cursor) == ([], first.cursor)

    _sales_imported(instance, "acme", _touched("2025-01-20"))
    third = _tick(instance, second.cursor)
    assert _requested(third) == [("2025-01-20", "2025-01-20")]
    assert third.cursor != first.cursor
    assert third.run_requests[0].run_key != single.run_key


def test_sensor_skips_materialisations_without_usable_days(instance: dg.DagsterInstance) -> None:
    _sales_imported(instance, "acme", {"status": "rejected"})
    _sales_imported(instance, "acme", {"days_touched": dg.MetadataValue.json({"a": 1})})
    _sales_imported(instance, "acme", _touched("10/01/2025"))
    _sales_imported(instance, "acme", _touched("2025-01-10"))

    result = _tick(instance, None)

    assert _requested(result) == [("2025-01-10", "2025-01-10")]
    assert _tick(instance, result.cursor).run_requests in (None, [])


def test_sensor_requests_run_the_job(
    loaded: Engine, resources: dict, instance: dg.DagsterInstance
) -> None:
    defs = dg.Definitions.merge(aggregates.defs(CALENDAR), dg.Definitions(resources=resources))
    job = defs.resolve_job_def("daily_sales_job")
    _sales_imported(instance, "acme", _touched("2025-01-10", "2025-01-11", "2025-01-12"))

    [request] = _tick(instance, None).run_requests
    result = job.execute_in_process(instance=instance, tags=request.tags)

    assert result.success
    assert read_daily(loaded) == EXPECTED
    assert len(result.get_asset_materialization_events()) == 3


def test_days_before_the_partition_start_are_refreshed_by_the_rebuild_job(
    loaded: Engine, resources: dict, instance: dg.DagsterInstance
) -> None:
    """SALES spans 2025-01-10..12; with partitions from the 11th, the 10th has none."""
    late_start = Calendar(timezone=MADRID, start="2025-01-11")
    defs = dg.Definitions.merge(aggregates.defs(late_start), dg.Definitions(resources=resources))
    sensor = defs.resolve_sensor_def("daily_sales_refresh_sensor")
    _sales_imported(instance, "acme", _touched("2025-01-10", "2025-01-11", "2025-01-12"))

    result = sensor(dg.build_sensor_context(instance=instance, definitions=defs))
    ranged, rebuild = result.run_requests
    for request in (ranged, rebuild):
        job = defs.resolve_job_def(request.job_name)
        run = job.execute_in_process(
            instance=instance, tags=request.tags, run_config=request.run_config
        )
        assert run.success, request.job_name

    assert (ranged.tags[RANGE_START_TAG], ranged.tags[RANGE_END_TAG]) == (
        "2025-01-11",
        "2025-01-12",
    )
    assert rebuild.job_name == "rebuild_aggregates_job"
    assert read_daily(loaded) == EXPECTED
