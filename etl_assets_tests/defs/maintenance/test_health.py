"""The health check job passing or failing loudly, its schedule and its wiring."""

import datetime as dt
import shutil
from pathlib import Path

import dagster as dg
import pytest
from sqlalchemy import Engine, make_url

from etl_assets.definitions import defs
from etl_assets.defs.calendar import Calendar
from etl_assets.defs.maintenance.health import build_health_schedule, health_check_job
from etl_assets.defs.resources import RedisResource, StorageResource, WarehouseResource
from etl_assets.services.storage import StoragePaths

CHECKS = ["warehouse", "redis", "disk", "inbox"]


def _free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def _resources(warehouse_url: str, paths: StoragePaths, redis_url: str | None) -> dict:
    return {
        "warehouse": WarehouseResource(url=warehouse_url),
        "storage": StorageResource(data_dir=str(paths.data_dir), inbox_dir=str(paths.inbox)),
        "redis": RedisResource(url=redis_url),
    }


def _run(resources: dict, paths: StoragePaths) -> dg.ExecuteInProcessResult:
    # Half the free space as the minimum: the disk check passes on any machine.
    config = {"min_free_bytes": _free_bytes(paths.data_dir) // 2, "min_free_fraction": 0.0}
    return health_check_job.execute_in_process(
        resources=resources,
        run_config={"ops": {"health_checks": {"config": config}}},
        raise_on_error=False,
    )


@pytest.mark.parametrize("with_redis", [True, False])
def test_health_job_passes_on_a_healthy_setup(
    engine: Engine,
    warehouse_url: str,
    paths: StoragePaths,
    redis_url: str,
    with_redis: bool,
) -> None:
    result = _run(_resources(warehouse_url, paths, redis_url if with_redis else None), paths)

    assert result.success
    [output] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    metadata = {k: getattr(v, "value", v) for k, v in output.step_output_data.metadata.items()}
    assert metadata["checks_failed"] == 0
    assert [metadata[f"{name}_ok"] for name in CHECKS] == [True] * len(CHECKS)
    redis_detail = "answers PING" if with_redis else "not configured"
    assert f"| redis | yes | {redis_detail} |" in str(metadata["results"])


@pytest.mark.parametrize("broken", ["warehouse", "redis", "inbox"])
def test_health_job_fails_naming_the_failed_check(
    engine: Engine,
    warehouse_url: str,
    tmp_path: Path,
    paths: StoragePaths,
    redis_url: str,
    missing_database_url: str,
    closed_port: int,
    broken: str,
) -> None:
    resources = _resources(warehouse_url, paths, redis_url)
    if broken == "warehouse":
        resources["warehouse"] = WarehouseResource(url=missing_database_url)
        expected = f'database "{make_url(missing_database_url).database}" does not exist'
    elif broken == "redis":
        resources["redis"] = RedisResource(url=f"redis://127.0.0.1:{closed_port}/0")
        expected = f"127.0.0.1:{closed_port}. Connection refused"
    else:
        inbox = tmp_path / "inbox-file"
        inbox.write_text("a file where the inbox should be", encoding="utf-8")
        resources["storage"] = StorageResource(data_dir=str(paths.data_dir), inbox_dir=str(inbox))
        expected = f"{inbox} is not writable: NotADirectoryError"

    result = _run(resources, paths)

    assert not result.success
    failure = result.failure_data_for_node("health_checks")
    assert failure is not None
    assert failure.user_failure_data is not None
    description = failure.user_failure_data.description or ""
    assert description.startswith(f"health check failed: {broken} (")
    assert expected in description
    for name in set(CHECKS) - {broken}:
        assert f"{name} (" not in description
    metadata = {k: getattr(v, "value", v) for k, v in failure.user_failure_data.metadata.items()}
    assert metadata["checks_failed"] == 1
    assert {name: metadata[f"{name}_ok"] for name in CHECKS} == {
        name: name != broken for name in CHECKS
    }


@pytest.mark.parametrize("timezone", ["UTC", "Europe/Lisbon"])
def test_health_schedule_requests_the_job(timezone: str) -> None:
    schedule = build_health_schedule(Calendar(timezone=timezone))
    scheduled = dt.datetime(2025, 3, 30, 1, 15, tzinfo=dt.UTC)
    context = dg.build_schedule_context(scheduled_execution_time=scheduled)

    [request] = schedule.evaluate_tick(context).run_requests or []

    assert schedule.name == "health_check_schedule"
    assert schedule.job_name == "health_check_job"
    assert schedule.cron_schedule == "*/15 * * * *"
    assert schedule.execution_timezone == timezone
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert request.run_config == {}
    assert request.tags == {"dagster/schedule_name": "health_check_schedule"}


def test_wired_into_the_code_location() -> None:
    job = defs.resolve_job_def("health_check_job")
    schedule = defs.resolve_schedule_def("health_check_schedule")

    assert [node.name for node in job.nodes] == ["health_checks"]
    assert schedule.job_name == "health_check_job"
    assert job.required_resource_keys - {"io_manager"} == {"warehouse", "storage", "redis"}
