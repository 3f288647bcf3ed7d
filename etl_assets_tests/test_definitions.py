"""The whole code location: what `dagster dev -m etl_assets.definitions` loads, and its settings."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from etl_assets.definitions import build_definitions, build_resources, defs
from etl_assets.services.imports.batches import BatchLimits


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No ETL_* settings, and a working directory of our own for the relative defaults."""
    for name in [n for n in os.environ if n.startswith("ETL_") and not n.startswith("ETL_TEST_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def test_definitions_load() -> None:
    dg.Definitions.validate_loadable(defs)


ASSET_GROUPS = {
    "products": "imports",
    "sales": "imports",
    "daily_sales": "aggregates",
    "dashboard_metrics": "metrics",
    "monthly_sales_report": "reports",
}
JOBS = {
    "import_job",
    "daily_sales_job",
    "rebuild_aggregates_job",
    "dashboard_metrics_job",
    "monthly_reports_job",
    "export_job",
    "health_check_job",
    "cleanup_job",
    "pull_job",
}
SENSORS = {"upload_sensor", "daily_sales_refresh_sensor", "run_failure_alert_sensor"}
SCHEDULES = {
    "daily_sales_schedule": "0 1 * * *",
    "dashboard_metrics_schedule": "*/5 * * * *",
    "monthly_reports_schedule": "0 3 1 * *",
    "health_check_schedule": "*/15 * * * *",
    "pull_schedule": "0 2 * * *",
    "cleanup_schedule": "30 3 * * *",
}


def test_assets_groups_and_checks() -> None:
    graph = defs.resolve_asset_graph()

    groups = {key.to_user_string(): graph.get(key).group_name for key in graph.get_all_asset_keys()}
    assert groups == ASSET_GROUPS
    assert {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys} == {
        ("products", "validation"),
        ("sales", "validation"),
        ("sales", "orphan_skus"),
    }
    for name in ("products", "sales"):
        partitions = graph.get(dg.AssetKey(name)).partitions_def
        assert isinstance(partitions, dg.DynamicPartitionsDefinition)
        # The tenants, shared with the reports: never one partition per upload.
        assert partitions.name == "companies"
    assert graph.get(dg.AssetKey("sales")).parent_keys == {dg.AssetKey("products")}
    downstream = {
        key.to_user_string()
        for name in ("products", "sales")
        for key in graph.get(dg.AssetKey(name)).child_keys
    }
    assert downstream == {"sales", "daily_sales", "dashboard_metrics", "monthly_sales_report"}
    assert isinstance(
        graph.get(dg.AssetKey("daily_sales")).partitions_def, dg.TimeWindowPartitionsDefinition
    )
    assert isinstance(
        graph.get(dg.AssetKey("monthly_sales_report")).partitions_def, dg.MultiPartitionsDefinition
    )


def test_jobs_sensors_and_schedules() -> None:
    assert {job.name for job in defs.resolve_all_job_defs()} >= JOBS
    assert {sensor.name for sensor in defs.sensors or []} == SENSORS
    schedules = {s.name: s for s in defs.schedules or []}
    assert {name: s.cron_schedule for name, s in schedules.items()} == SCHEDULES
    for schedule in schedules.values():
        assert schedule.execution_timezone == "UTC"
        assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING


def test_calendar_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETL_TIMEZONE", "Europe/Madrid")
    monkeypatch.setenv("ETL_PARTITIONS_START", "2025-06-01")

    built = build_definitions()

    daily = built.resolve_asset_graph().get(dg.AssetKey("daily_sales")).partitions_def
    assert daily.timezone == "Europe/Madrid"
    assert daily.get_first_partition_key() == "2025-06-01"
    assert {s.execution_timezone for s in built.schedules or []} == {"Europe/Madrid"}


def test_import_job_covers_both_tables_by_company() -> None:
    job = defs.resolve_job_def("import_job")

    assert isinstance(job.partitions_def, dg.DynamicPartitionsDefinition)
    assert job.partitions_def.name == "companies"
    executable = {key.to_user_string() for key in job.asset_layer.executable_asset_keys}
    assert executable == {"products", "sales"}
    # Whole-run retries are the sensor's (bounded attempts), not the daemon's.
    assert job.tags["dagster/max_retries"] == "0"


def test_upload_sensor_runs_by_default() -> None:
    sensor = defs.resolve_sensor_def("upload_sensor")

    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert [target.job_name for target in sensor.targets] == ["import_job"]
    assert sensor.required_resource_keys == {"warehouse", "storage", "import_settings"}


def test_resources_cover_every_requirement() -> None:
    defined = set(defs.resources or {})
    assert defined == {"warehouse", "storage", "import_settings", "redis", "webhook"}
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        # `io_manager` is Dagster's default; the assets return MaterializeResult, never outputs.
        required = graph.assets_def_for_key(key).required_resource_keys - {"io_manager"}
        assert required <= defined, key
    required = defs.resolve_job_def("import_job").required_resource_keys
    assert required >= {"warehouse", "storage", "import_settings"}


def test_build_resources_defaults(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with dg.build_resources(build_resources()) as resolved:
        data = tmp_path / "data"
        assert resolved.warehouse.url == f"sqlite:///{data}/warehouse.db"
        paths = resolved.storage.paths()
        assert (paths.data_dir, paths.inbox) == (data, data / "inbox")
        assert resolved.import_settings.settle_seconds == 5
        assert resolved.import_settings.max_invalid_fraction == 0.05
        assert resolved.import_settings.companies_file is None
        assert resolved.import_settings.batch_limits() == BatchLimits(50, 1024**3)


def test_build_resources_honours_the_environment(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    companies = tmp_path / "companies.yaml"
    companies.write_text("companies:\n  acme:\n    delimiter: ';'\n", encoding="utf-8")
    clean_env.setenv("ETL_DATA_DIR", str(tmp_path / "elsewhere"))
    clean_env.setenv("ETL_INBOX_DIR", str(tmp_path / "drop"))
    clean_env.setenv("ETL_WAREHOUSE_URL", f"sqlite:///{tmp_path}/other.db")
    clean_env.setenv("ETL_COMPANIES_FILE", str(companies))
    clean_env.setenv("ETL_SETTLE_SECONDS", "7")
    clean_env.setenv("ETL_MAX_INVALID_FRACTION", "0.25")
    clean_env.setenv("ETL_IMPORT_BATCH_MAX_UPLOADS", "10")
    clean_env.setenv("ETL_IMPORT_BATCH_MAX_BYTES", "1000000")

    with dg.build_resources(build_resources()) as resolved:
        assert resolved.warehouse.url == f"sqlite:///{tmp_path}/other.db"
        paths = resolved.storage.paths()
        assert paths.data_dir == tmp_path / "elsewhere"
        assert paths.inbox == tmp_path / "drop"
        assert paths.landing == tmp_path / "elsewhere" / "landing"
        assert resolved.import_settings.settle_seconds == 7
        assert resolved.import_settings.max_invalid_fraction == 0.25
        assert resolved.import_settings.companies().options["acme"].delimiter == ";"
        assert resolved.import_settings.import_settings().max_invalid_fraction == 0.25
        assert resolved.import_settings.batch_limits() == BatchLimits(10, 1_000_000)


def test_env_vars_are_resolved_when_resources_are_built(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_env.setenv("ETL_WAREHOUSE_URL", "sqlite:///first.db")
    resources = build_resources()
    clean_env.setenv("ETL_WAREHOUSE_URL", f"sqlite:///{tmp_path}/second.db")

    with dg.build_resources(resources) as resolved:
        assert resolved.warehouse.url == f"sqlite:///{tmp_path}/second.db"


@pytest.mark.parametrize("raw", ["five percent", "0,05", "5%", "nan", "inf", "1.5", "-0.1"])
def test_bad_max_invalid_fraction_names_the_variable(
    clean_env: pytest.MonkeyPatch, raw: str
) -> None:
    clean_env.setenv("ETL_MAX_INVALID_FRACTION", raw)

    with pytest.raises(ValueError, match="ETL_MAX_INVALID_FRACTION must be a number") as error:
        build_resources()

    assert repr(raw) in str(error.value)


def test_bad_settle_seconds_names_the_variable(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("ETL_SETTLE_SECONDS", "soon")
    resources = build_resources()

    with (
        pytest.raises(dg.DagsterInvalidConfigError, match="ETL_SETTLE_SECONDS") as error,
        dg.build_resources(resources),
    ):
        pass

    assert "cannot be coerced into an int" in str(error.value)


HEAVY = ("pandas", "pandera", "openpyxl", "matplotlib", "fpdf", "numpy")


def test_loading_the_code_location_leaves_the_heavy_libraries_unimported() -> None:
    """Every run worker loads the code location: the data and PDF libraries would add seconds to
    each run's start, and only the steps that parse uploads or draw a PDF need them."""
    probe = f"import sys, etl_assets.definitions; print(sorted(set({HEAVY!r}) & set(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    assert loaded.stdout.strip() == "[]"


UPLOAD_LIMITS = {
    "ETL_MAX_UPLOAD_BYTES": ("max_upload_bytes", 2 * 1024**3, 5_000_000),
    "ETL_MAX_ROW_SIZE": ("max_row_size", 1024**2, 4096),
    "ETL_MAX_SHEET_CELLS": ("max_sheet_cells", 10_000_000, 600),
    "ETL_MAX_REJECTS_WRITTEN": ("max_rejects_written", 100_000, 25),
}


def test_upload_limits_have_defaults(clean_env: pytest.MonkeyPatch) -> None:
    with dg.build_resources(build_resources()) as resolved:
        settings = resolved.import_settings.import_settings()
    assert {f: getattr(settings, f) for f, _, _ in UPLOAD_LIMITS.values()} == {
        field: default for field, default, _ in UPLOAD_LIMITS.values()
    }


def test_upload_limits_follow_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    for name, (_, _, value) in UPLOAD_LIMITS.items():
        clean_env.setenv(name, str(value))
    with dg.build_resources(build_resources()) as resolved:
        settings = resolved.import_settings.import_settings()
    assert {f: getattr(settings, f) for f, _, _ in UPLOAD_LIMITS.values()} == {
        field: value for field, _, value in UPLOAD_LIMITS.values()
    }
