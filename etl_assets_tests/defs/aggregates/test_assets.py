"""The daily_sales asset materialised in process: a day, a range, twice, a failing company."""

import datetime as dt

import dagster as dg
import pytest
from sqlalchemy import Engine, delete

from etl_assets.defs.aggregates.assets import build_daily_sales
from etl_assets.defs.aggregates.sensors import RANGE_END_TAG, RANGE_START_TAG
from etl_assets.warehouse.schema import daily_sales
from etl_assets_tests.services.figures.aggregates_dataset import (
    CALENDAR,
    EXPECTED,
    FIRST,
    LAST,
    MADRID,
    OVERFLOW_ERROR,
    OVERFLOWING,
    D,
    load_sales,
    read_daily,
)


def _materialize(
    resources: dict, instance: dg.DagsterInstance, **kwargs: object
) -> dg.ExecuteInProcessResult:
    result = dg.materialize(
        [build_daily_sales(CALENDAR)], resources=resources, instance=instance, **kwargs
    )
    assert result.success
    return result


def _range_tags(first: dt.date, last: dt.date) -> dict[str, str]:
    return {RANGE_START_TAG: first.isoformat(), RANGE_END_TAG: last.isoformat()}


def test_asset_materialises_one_day(
    loaded: Engine, resources: dict, instance: dg.DagsterInstance
) -> None:
    result = _materialize(resources, instance, partition_key="2025-01-10")

    assert read_daily(loaded) == {k: v for k, v in EXPECTED.items() if k[1] == FIRST}
    [event] = result.get_asset_materialization_events()
    metadata = event.materialization.metadata
    assert event.materialization.partition == "2025-01-10"
    assert metadata["dagster/row_count"].value == 2
    assert (metadata["first_day"].value, metadata["last_day"].value) == ("2025-01-10",) * 2
    assert metadata["days"].value == 1
    assert metadata["revenue"].value == pytest.approx(22.05 + 13.28)
    assert metadata["timezone"].value == MADRID
    assert "| acme | 1 | 2025-01-10 | 2025-01-10 | 22.05 |" in metadata["preview"].value


def test_ranged_run_equals_per_day_runs(
    loaded: Engine, resources: dict, instance: dg.DagsterInstance
) -> None:
    days = [FIRST + dt.timedelta(days=n) for n in range(3)]
    for day in days:
        _materialize(resources, instance, partition_key=day.isoformat())
    per_day = read_daily(loaded)
    with loaded.begin() as conn:
        conn.execute(delete(daily_sales))

    ranged = _materialize(resources, instance, tags=_range_tags(FIRST, LAST))

    assert read_daily(loaded) == per_day == EXPECTED
    events = ranged.get_asset_materialization_events()
    assert sorted(e.materialization.partition for e in events) == [d.isoformat() for d in days]
    assert {e.materialization.metadata["dagster/row_count"].value for e in events} == {5}
    assert {e.materialization.metadata["days"].value for e in events} == {3}


def test_rematerialising_a_partition_is_idempotent(
    loaded: Engine, resources: dict, instance: dg.DagsterInstance
) -> None:
    first = _materialize(resources, instance, partition_key="2025-01-11")
    before = read_daily(loaded)
    second = _materialize(resources, instance, partition_key="2025-01-11")

    assert (
        read_daily(loaded)
        == before
        == {k: v for k, v in EXPECTED.items() if k[1] == D(2025, 1, 11)}
    )
    [m1], [m2] = first.get_asset_materialization_events(), second.get_asset_materialization_events()
    assert m1.materialization.metadata["rows_deleted"].value == 0
    assert m2.materialization.metadata["rows_deleted"].value == 2


def test_asset_fails_naming_the_company_after_writing_the_others(
    loaded: Engine, resources: dict, instance: dg.DagsterInstance
) -> None:
    load_sales(loaded, OVERFLOWING)

    result = dg.materialize(
        [build_daily_sales(CALENDAR)],
        resources=resources,
        instance=instance,
        partition_key="2025-01-10",
        raise_on_error=False,
    )

    assert not result.success
    # Not retried: the same figures would overflow again.
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert not [e for e in result.all_events if e.is_step_up_for_retry]
    data = failure.step_failure_data.user_failure_data
    assert data.description == (
        "daily_sales 2025-01-10..2025-01-10 not refreshed for 1 company "
        "(the others were written): huge"
    )
    assert OVERFLOW_ERROR.search(data.metadata["huge"].value)
    assert read_daily(loaded) == {k: v for k, v in EXPECTED.items() if k[1] == FIRST}
