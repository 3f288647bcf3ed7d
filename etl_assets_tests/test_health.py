"""Health checks: each check against the real thing, and the job passing or failing loudly."""

import datetime as dt
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from redis import Redis
from sqlalchemy import Engine, make_url

from etl_assets.definitions import defs
from etl_assets.defs.calendar import Calendar
from etl_assets.defs.maintenance.health import build_health_schedule, health_check_job
from etl_assets.defs.resources import RedisResource, StorageResource, WarehouseResource
from etl_assets.services.maintenance.health import (
    check_disk,
    check_inbox,
    check_redis,
    check_warehouse,
    run_health_checks,
)
from etl_assets.services.storage import StoragePaths
from etl_assets.warehouse.schema import metadata
from etl_assets_tests import redis_server
from etl_assets_tests.settings import postgres_server_url

CHECKS = ["warehouse", "redis", "disk", "inbox"]


@pytest.fixture
def live_redis_url() -> str:
    """The test Redis URL; an unreachable Redis fails the test."""
    return redis_server.live_redis_url()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A local port that refuses connections: bound (so nobody else takes it), never listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def missing_database_url(pg_admin: Engine) -> str:
    """A URL on the running test server naming a database that does not exist."""
    name = f"etl_missing_{uuid.uuid4().hex[:12]}"
    return make_url(postgres_server_url()).set(database=name).render_as_string(hide_password=False)


def _free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def test_warehouse_check_passes_with_the_schema(engine: Engine, warehouse_url: str) -> None:
    result = check_warehouse(warehouse_url)

    assert result.ok
    assert result.detail == f"{engine.dialect.name} reachable, {len(metadata.tables)} tables"


def test_warehouse_check_names_missing_tables(tmp_path: Path) -> None:
    result = check_warehouse(f"sqlite:///{tmp_path}/empty.db")

    assert not result.ok
    assert result.detail == f"sqlite: tables missing: {', '.join(sorted(metadata.tables))}"


def test_warehouse_check_reports_a_missing_database(missing_database_url: str) -> None:
    result = check_warehouse(missing_database_url)

    database = make_url(missing_database_url).database
    assert not result.ok
    assert result.detail.startswith("unreachable: OperationalError")
    assert f'database "{database}" does not exist' in result.detail


def test_redis_check(live_redis_url: str, closed_port: int) -> None:
    with (
        Redis.from_url(live_redis_url) as up,
        Redis.from_url(f"redis://127.0.0.1:{closed_port}") as down,
    ):
        assert check_redis(up).ok
        refused = check_redis(down)
    assert check_redis(None).detail == "not configured"
    assert not refused.ok
    assert f"127.0.0.1:{closed_port}" in refused.detail
    assert "Connection refused" in refused.detail


def test_disk_check_thresholds(tmp_path: Path) -> None:
    usage = shutil.disk_usage(tmp_path)
    free_fraction = usage.free / usage.total

    assert check_disk(tmp_path, min_free_bytes=usage.free // 2, min_free_fraction=0).ok
    assert check_disk(tmp_path, min_free_bytes=0, min_free_fraction=free_fraction / 2).ok
    too_many_bytes = check_disk(tmp_path, min_free_bytes=usage.total + 1, min_free_fraction=0)
    too_large_share = check_disk(tmp_path, min_free_bytes=0, min_free_fraction=1.0)
    assert not too_many_bytes.ok
    assert not too_large_share.ok
    assert "below the minimum" in too_many_bytes.detail
    missing = check_disk(tmp_path / "nowhere", min_free_bytes=0, min_free_fraction=0)
    assert not missing.ok
    assert "FileNotFoundError" in missing.detail


def test_inbox_check_creates_and_removes_a_file(paths: StoragePaths) -> None:
    (paths.inbox / "acme").mkdir()
    before = sorted(paths.inbox.rglob("*"))

    result = check_inbox(paths.inbox)

    assert result.ok
    assert result.detail == f"{paths.inbox} is writable"
    assert sorted(paths.inbox.rglob("*")) == before


@pytest.mark.parametrize("kind", ["regular file", "missing"])
def test_inbox_check_fails_when_not_a_directory(tmp_path: Path, kind: str) -> None:
    inbox = tmp_path / "inbox"
    if kind == "regular file":
        # Tests run as root, so a read-only directory would still be writable.
        inbox.write_text("not a directory", encoding="utf-8")

    result = check_inbox(inbox)

    assert not result.ok
    assert result.detail.startswith(f"{inbox} is not writable: ")
    expected = "NotADirectoryError" if kind == "regular file" else "FileNotFoundError"
    assert expected in result.detail


def test_run_health_checks_on_a_healthy_setup(
    engine: Engine, warehouse_url: str, paths: StoragePaths, live_redis_url: str
) -> None:
    with Redis.from_url(live_redis_url) as client:
        results = run_health_checks(
            warehouse_url=warehouse_url,
            redis_client=client,
            data_dir=paths.data_dir,
            inbox=paths.inbox,
            min_free_bytes=_free_bytes(paths.data_dir) // 2,
            min_free_fraction=0,
        )

    assert [r.name for r in results] == CHECKS
    assert [r.ok for r in results] == [True] * len(CHECKS)


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
    live_redis_url: str,
    with_redis: bool,
) -> None:
    result = _run(_resources(warehouse_url, paths, live_redis_url if with_redis else None), paths)

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
    live_redis_url: str,
    missing_database_url: str,
    closed_port: int,
    broken: str,
) -> None:
    resources = _resources(warehouse_url, paths, live_redis_url)
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
