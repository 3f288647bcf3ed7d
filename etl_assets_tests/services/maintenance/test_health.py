"""Health checks: each check against the real thing."""

import shutil
from pathlib import Path

import pytest
from redis import Redis
from sqlalchemy import Engine, make_url

from etl_assets.services.maintenance.health import (
    check_disk,
    check_inbox,
    check_redis,
    check_warehouse,
    run_health_checks,
)
from etl_assets.services.storage import StoragePaths
from etl_assets.warehouse.schema import metadata

CHECKS = ["warehouse", "redis", "disk", "inbox"]


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


def test_redis_check(redis_url: str, closed_port: int) -> None:
    with (
        Redis.from_url(redis_url) as up,
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
    engine: Engine, warehouse_url: str, paths: StoragePaths, redis_url: str
) -> None:
    with Redis.from_url(redis_url) as client:
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
