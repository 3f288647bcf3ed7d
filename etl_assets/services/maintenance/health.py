"""Health checks of what the platform needs: warehouse, Redis, disk space, a writable inbox.

Each check reports instead of raising, so one run shows every problem at once. Details carry
no secrets: errors are reduced to their type and first line, never a URL.
"""

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from redis import Redis
from sqlalchemy import inspect, text

from etl_assets.warehouse.schema import make_engine, metadata

GIB = 1 << 30


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check."""

    name: str
    ok: bool
    detail: str


def _error(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _table_names(url: str) -> tuple[str, set[str]]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            return engine.dialect.name, set(inspect(conn).get_table_names())
    finally:
        engine.dispose()


def check_warehouse(url: str) -> CheckResult:
    """`SELECT 1` answers and every table of the schema exists."""
    try:
        dialect, present = _table_names(url)
    except Exception as exc:  # any driver or URL error means "unreachable"; the detail says which
        return CheckResult("warehouse", False, f"unreachable: {_error(exc)}")
    missing = sorted(set(metadata.tables) - present)
    if missing:
        return CheckResult("warehouse", False, f"{dialect}: tables missing: {', '.join(missing)}")
    return CheckResult("warehouse", True, f"{dialect} reachable, {len(metadata.tables)} tables")


def check_redis(client: Redis | None) -> CheckResult:
    """Redis answers PING; passes with a note when Redis is not configured."""
    if client is None:
        return CheckResult("redis", True, "not configured")
    try:
        client.ping()
    except Exception as exc:  # connection, auth and timeout errors alike
        return CheckResult("redis", False, f"no answer to PING: {_error(exc)}")
    return CheckResult("redis", True, "answers PING")


def check_disk(path: Path, *, min_free_bytes: int, min_free_fraction: float) -> CheckResult:
    """Free space on the file system of `path` is at least both minimums (0 disables one)."""
    try:
        usage = shutil.disk_usage(path)
    except OSError as exc:
        return CheckResult("disk", False, f"{path}: {_error(exc)}")
    fraction = usage.free / usage.total
    detail = (
        f"{usage.free / GIB:.1f} GiB free of {usage.total / GIB:.1f} GiB ({fraction:.1%}) at {path}"
    )
    if usage.free < min_free_bytes or fraction < min_free_fraction:
        minimum = f"{min_free_bytes / GIB:.1f} GiB and {min_free_fraction:.1%}"
        return CheckResult("disk", False, f"{detail}; below the minimum of {minimum}")
    return CheckResult("disk", True, detail)


def check_inbox(inbox: Path) -> CheckResult:
    """A file can be created in, and removed from, the inbox."""
    try:
        # Hidden and `.tmp`: the upload sensor ignores it if it looks meanwhile.
        with tempfile.NamedTemporaryFile(dir=inbox, prefix=".health-", suffix=".tmp"):
            pass
    except OSError as exc:
        return CheckResult("inbox", False, f"{inbox} is not writable: {_error(exc)}")
    return CheckResult("inbox", True, f"{inbox} is writable")


def run_health_checks(
    *,
    warehouse_url: str,
    redis_client: Redis | None,
    data_dir: Path,
    inbox: Path,
    min_free_bytes: int = GIB,
    min_free_fraction: float = 0.05,
) -> list[CheckResult]:
    """Every check, in a fixed order: warehouse, redis, disk, inbox."""
    return [
        check_warehouse(warehouse_url),
        check_redis(redis_client),
        check_disk(data_dir, min_free_bytes=min_free_bytes, min_free_fraction=min_free_fraction),
        check_inbox(inbox),
    ]


def failed(results: list[CheckResult]) -> list[CheckResult]:
    """The results that did not pass."""
    return [r for r in results if not r.ok]
