"""The production `dagster.yaml`, loaded for real against a fresh PostgreSQL database."""

import shutil
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage
from sqlalchemy import make_url

from etl_assets_tests.repo import REPO
from etl_assets_tests.settings import postgres_server_url


@pytest.fixture
def instance(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dg.DagsterInstance]:
    """The repo's dagster.yaml in a temporary DAGSTER_HOME, its variables set as in .env.

    The instance is disposed before `pg_url` drops the database.
    """
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    db = make_url(pg_url)
    server = make_url(postgres_server_url())
    env = {
        "DAGSTER_HOME": str(home),
        "DAGSTER_POSTGRES_HOST": server.host or "127.0.0.1",
        "DAGSTER_POSTGRES_PORT": str(server.port or 5432),
        "DAGSTER_POSTGRES_DB": db.database,
        "DAGSTER_POSTGRES_USER": server.username or "postgres",
        "DAGSTER_POSTGRES_PASSWORD": server.password or "",
        "DAGSTER_MAX_CONCURRENT_RUNS": "7",
        "DAGSTER_STORAGE_DIR": str(tmp_path / "storage"),
        "DAGSTER_COMPUTE_LOGS_DIR": str(tmp_path / "compute_logs"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with dg.DagsterInstance.get() as instance:
        yield instance


@dg.op
def one() -> int:
    return 1


@dg.job
def tiny() -> None:
    one()


def test_storage_is_postgres(instance: dg.DagsterInstance) -> None:
    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(instance.schedule_storage, PostgresScheduleStorage)


def test_runs_are_queued_one_import_per_company(instance: dg.DagsterInstance) -> None:
    coordinator = instance.run_coordinator
    assert isinstance(coordinator, dg.QueuedRunCoordinator)
    queue = coordinator.get_run_queue_config()
    assert queue.max_concurrent_runs == 7  # the env string resolved as an int
    assert queue.tag_concurrency_limits == [
        {"key": "etl/company", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
    ]


def test_default_run_launcher(instance: dg.DagsterInstance) -> None:
    assert isinstance(instance.run_launcher, dg.DefaultRunLauncher)


def test_run_monitoring_enabled_with_timeouts(instance: dg.DagsterInstance) -> None:
    assert instance.run_monitoring_enabled
    assert instance.run_monitoring_start_timeout_seconds == 300
    assert instance.run_monitoring_cancel_timeout_seconds == 300
    assert instance.run_monitoring_max_runtime_seconds == 14400
    assert instance.run_monitoring_poll_interval_seconds == 60


def test_run_retries_only_for_crashed_runs(instance: dg.DagsterInstance) -> None:
    assert instance.run_retries_enabled
    assert instance.run_retries_max_retries == 2
    assert not instance.run_retries_retry_on_asset_or_op_failure


def test_tick_retention(instance: dg.DagsterInstance) -> None:
    retention = instance.get_settings("retention")
    assert retention["schedule"]["purge_after_days"] == 90
    assert retention["sensor"]["purge_after_days"] == {
        "skipped": 1,
        "success": 30,
        "failure": 90,
        "started": 90,
    }


def test_telemetry_off(instance: dg.DagsterInstance) -> None:
    assert not instance.telemetry_enabled


def test_a_run_writes_events_to_postgres_and_logs_to_the_shared_dirs(
    instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    # The first event write is where a psycopg 3 URL fails (NOTIFY run_events, $1).
    result = tiny.execute_in_process(instance=instance)
    assert result.success
    run = instance.get_run_by_id(result.run_id)
    assert run is not None
    assert run.status == dg.DagsterRunStatus.SUCCESS
    events = instance.all_logs(result.run_id)
    assert any(e.dagster_event_type == dg.DagsterEventType.RUN_SUCCESS for e in events)
    assert Path(instance.storage_directory()).is_relative_to(tmp_path / "storage")
    assert any(p.is_file() for p in (tmp_path / "compute_logs").rglob("*"))
