"""The rebuild job: a dry run unless forced, a failing company, a bad range."""

import logging
from decimal import Decimal

import dagster as dg
import pytest
from sqlalchemy import Engine, func, select

from etl_assets.defs.aggregates.jobs import build_rebuild_aggregates_job
from etl_assets.defs.resources import WarehouseResource
from etl_assets.warehouse.schema import daily_sales
from etl_assets_tests.services.figures.aggregates_dataset import (
    CALENDAR,
    EXPECTED,
    OVERFLOW_ERROR,
    OVERFLOWING,
    D,
    insert_daily,
    load_sales,
    read_daily,
)


def _rebuild(
    instance: dg.DagsterInstance, warehouse_url: str, **config: object
) -> dg.ExecuteInProcessResult:
    job = build_rebuild_aggregates_job(CALENDAR)
    return job.execute_in_process(
        run_config={"ops": {"rebuild_daily_sales": {"config": config}}},
        resources={"warehouse": WarehouseResource(url=warehouse_url)},
        instance=instance,
        raise_on_error=False,
    )


def _output_metadata(result: dg.ExecuteInProcessResult) -> dict[str, object]:
    [output] = [e for e in result.all_node_events if e.is_successful_output]
    return {k: v.value for k, v in output.step_output_data.metadata.items()}


def test_rebuild_without_force_deletes_nothing_and_says_what_it_would(
    loaded: Engine, warehouse_url: str, instance: dg.DagsterInstance
) -> None:
    insert_daily(loaded, "acme", D(2025, 1, 10), "7.00")
    insert_daily(loaded, "acme", D(2025, 1, 12), "8.00")
    insert_daily(loaded, "globex", D(2025, 1, 11), "9.00")
    insert_daily(loaded, "globex", D(2025, 1, 13), "9.00")  # outside the range
    before = read_daily(loaded)

    result = _rebuild(instance, warehouse_url, start="2025-01-10", end="2025-01-12")

    assert result.success
    assert read_daily(loaded) == before
    metadata = _output_metadata(result)
    assert metadata["dry_run"] is True
    assert (metadata["would_delete_rows"], metadata["would_delete_companies"]) == (3, 2)
    assert "| acme | 2 | 2025-01-10 | 2025-01-12 | 15.00 |" in metadata["would_delete"]
    assert "| globex | 1 | 2025-01-11 | 2025-01-11 | 9.00 |" in metadata["would_delete"]
    warnings = [
        e.user_message for e in instance.all_logs(result.run_id) if e.level == logging.WARNING
    ]
    assert any("would delete 3 daily_sales rows of 2 companies" in m for m in warnings)


def test_rebuild_with_force_recomputes_the_range(
    loaded: Engine, warehouse_url: str, instance: dg.DagsterInstance
) -> None:
    insert_daily(loaded, "acme", D(2025, 1, 10), "7.00")
    insert_daily(loaded, "initech", D(2025, 1, 11), "9.00")
    insert_daily(loaded, "globex", D(2025, 1, 13), "9.00")  # outside the range

    result = _rebuild(instance, warehouse_url, start="2025-01-10", end="2025-01-12", force=True)

    assert result.success
    assert read_daily(loaded) == {
        **EXPECTED,
        ("globex", D(2025, 1, 13)): (Decimal("9.00"), 1, 1, 0, 1),
    }
    metadata = _output_metadata(result)
    assert (metadata["dry_run"], metadata["rows_deleted"]) == (False, 2)
    assert metadata["dagster/row_count"] == len(EXPECTED)


def test_rebuild_fails_naming_the_company_after_writing_the_others(
    loaded: Engine, warehouse_url: str, instance: dg.DagsterInstance
) -> None:
    load_sales(loaded, OVERFLOWING)

    result = _rebuild(instance, warehouse_url, start="2025-01-10", end="2025-01-12", force=True)

    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    data = failure.step_failure_data.user_failure_data
    assert data.description.startswith("daily_sales 2025-01-10..2025-01-12 not refreshed for 1")
    assert OVERFLOW_ERROR.search(data.metadata["huge"].value)
    assert read_daily(loaded) == EXPECTED


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [("2025-01-12", "2025-01-10", "is before start"), ("12/01/2025", "2025-01-13", "YYYY-MM-DD")],
)
def test_rebuild_refuses_a_bad_range(
    loaded: Engine,
    warehouse_url: str,
    instance: dg.DagsterInstance,
    start: str,
    end: str,
    message: str,
) -> None:
    result = _rebuild(instance, warehouse_url, start=start, end=end, force=True)

    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert message in failure.step_failure_data.error.message
    with loaded.connect() as conn:
        assert conn.execute(select(func.count()).select_from(daily_sales)).scalar_one() == 0
