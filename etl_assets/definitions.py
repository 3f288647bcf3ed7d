"""The code location: every asset, job, sensor and resource, wired from the environment.

This is the one module that reads environment variables to choose wiring; resources get
`EnvVar`s, so values are resolved where each step runs and never appear in run config.
"""

import os
from pathlib import Path

import dagster as dg

from etl_assets.defs.aggregates import definitions as aggregates
from etl_assets.defs.calendar import Calendar
from etl_assets.defs.execution import celery_executor_def
from etl_assets.defs.imports import definitions as imports
from etl_assets.defs.maintenance import definitions as maintenance
from etl_assets.defs.metrics import definitions as metrics
from etl_assets.defs.notifications import definitions as notifications
from etl_assets.defs.reports import definitions as reports
from etl_assets.defs.resources import (
    ImportSettingsResource,
    RedisResource,
    StorageResource,
    WarehouseResource,
    WebhookResource,
)

EXECUTORS = ("multiprocess", "in_process", "celery")


def _env(name: str, default: str | None) -> str | dg.EnvVar | None:
    """The variable as an `EnvVar` when it is set, else the documented default."""
    return dg.EnvVar(name) if os.environ.get(name) else default


def _int_env(name: str, default: int) -> int | dg.EnvVar:
    """The variable as an integer `EnvVar` when it is set, else the documented default."""
    return dg.EnvVar.int(name) if os.environ.get(name) else default


def _fraction_env(name: str, default: float) -> float:
    # Dagster config has no float EnvVar, so this one is parsed here, with a clear error.
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number between 0 and 1, got {raw!r}") from exc
    if not 0 <= value <= 1:  # also false for nan
        raise ValueError(f"{name} must be a number between 0 and 1, got {raw!r}")
    return value


def _count_env(name: str, default: int, unit: str) -> int:
    # Goes into schedule run config or executor arguments, not a resource, so it is parsed
    # here, with a clear error.
    raw = os.environ.get(name)
    if not raw:
        return default
    if not raw.strip().isdigit() or int(raw) < 1:
        raise ValueError(f"{name} must be a whole number of {unit}, at least 1, got {raw!r}")
    return int(raw)


def build_resources() -> dict[str, dg.ConfigurableResource]:
    """Resources for the current environment (see README, "Environment")."""
    data_dir = str(Path(os.environ.get("ETL_DATA_DIR") or "data").resolve())
    return {
        "warehouse": WarehouseResource(
            url=_env("ETL_WAREHOUSE_URL", f"sqlite:///{data_dir}/warehouse.db")
        ),
        "storage": StorageResource(
            data_dir=_env("ETL_DATA_DIR", data_dir), inbox_dir=_env("ETL_INBOX_DIR", None)
        ),
        "import_settings": ImportSettingsResource(
            companies_file=_env("ETL_COMPANIES_FILE", None),
            settle_seconds=_int_env("ETL_SETTLE_SECONDS", 5),
            batch_max_uploads=_int_env("ETL_IMPORT_BATCH_MAX_UPLOADS", 50),
            batch_max_bytes=_int_env("ETL_IMPORT_BATCH_MAX_BYTES", 1024**3),
            max_invalid_fraction=_fraction_env("ETL_MAX_INVALID_FRACTION", 0.05),
            timezone=_env("ETL_TIMEZONE", "UTC"),
            pull_roots=_env("ETL_PULL_ROOTS", ""),
            max_upload_bytes=_int_env("ETL_MAX_UPLOAD_BYTES", 2 * 1024**3),
            max_row_size=_int_env("ETL_MAX_ROW_SIZE", 1024**2),
            max_sheet_cells=_int_env("ETL_MAX_SHEET_CELLS", 10_000_000),
            max_rejects_written=_int_env("ETL_MAX_REJECTS_WRITTEN", 100_000),
        ),
        "redis": RedisResource(url=_env("ETL_REDIS_URL", None)),
        "webhook": WebhookResource(url=_env("ETL_ALERT_WEBHOOK_URL", None)),
    }


def build_executor() -> dg.ExecutorDefinition:
    """`ETL_EXECUTOR`: `multiprocess` (default), `in_process` or `celery` (production)."""
    name = os.environ.get("ETL_EXECUTOR") or "multiprocess"
    if name == "multiprocess":
        return dg.multiprocess_executor
    if name == "in_process":
        return dg.in_process_executor
    if name != "celery":
        raise ValueError(f"ETL_EXECUTOR must be one of {', '.join(EXECUTORS)}, got {name!r}")
    # Checked here, at load, because a run whose broker is unset would only fail once launched.
    missing = [n for n in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND") if not os.environ.get(n)]
    if missing:
        raise ValueError(f"ETL_EXECUTOR=celery needs {' and '.join(missing)} to be set")
    return celery_executor_def(_count_env("ETL_CELERY_QUEUE_WAIT_SECONDS", 60, "seconds"))


def build_calendar() -> Calendar:
    """`ETL_TIMEZONE` (default UTC) and `ETL_PARTITIONS_START` (default 2024-01-01)."""
    return Calendar(
        timezone=os.environ.get("ETL_TIMEZONE") or "UTC",
        start=os.environ.get("ETL_PARTITIONS_START") or "2024-01-01",
    )


def build_domains(calendar: Calendar) -> dg.Definitions:
    """Every domain's definitions for the calendar, merged (no resources, no executor)."""
    return dg.Definitions.merge(
        imports.defs(calendar),
        aggregates.defs(calendar),
        metrics.defs(calendar),
        reports.defs(calendar),
        notifications.defs(calendar),
        maintenance.defs(
            calendar,
            pull_source=os.environ.get("ETL_PULL_SOURCE") or None,
            retention_days=_count_env("ETL_RETENTION_DAYS", 90, "days"),
        ),
    )


def build_definitions() -> dg.Definitions:
    """The code location for the current environment."""
    return dg.Definitions.merge(
        build_domains(build_calendar()),
        dg.Definitions(
            resources=build_resources(),
            # The default of every job, and of ad-hoc materialisations from the UI or the CLI.
            executor=build_executor(),
        ),
    )


defs = build_definitions()
