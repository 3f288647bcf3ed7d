"""The whole code location: what `dagster dev -m etl_assets.definitions` loads, and its settings."""

import json
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


SNAPSHOT = Path(__file__).with_name("definitions_snapshot.json")
# Set to rewrite the snapshot after an intended change; review its diff before committing.
UPDATE_SNAPSHOT = "ETL_TEST_UPDATE_SNAPSHOT"


def _partitions(partitions_def: dg.PartitionsDefinition | None) -> str | None:
    if partitions_def is None:
        return None
    name = getattr(partitions_def, "name", None)
    return f"{type(partitions_def).__name__}({name})" if name else type(partitions_def).__name__


def _schedules(definitions: dg.Definitions) -> list[dg.ScheduleDefinition]:
    """The schedules as the code location resolves them (a partitioned schedule takes its cron
    and timezone from its job's partitions)."""
    names = sorted(s.name for s in definitions.schedules or [])
    return [definitions.resolve_schedule_def(name) for name in names]


def _shape(definitions: dg.Definitions) -> dict:
    """What a user sees of the code location: assets, checks, jobs, schedules, sensors."""
    graph = definitions.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "partitions": _partitions(node.partitions_def),
            "depends_on": sorted(k.to_user_string() for k in node.parent_keys),
            "checks": sorted(c.name for c in graph.asset_check_keys if c.asset_key == key),
        }
    return {
        "assets": assets,
        "jobs": {
            job.name: {"tags": dict(sorted(job.tags.items()))}
            for job in sorted(definitions.resolve_all_job_defs(), key=lambda j: j.name)
            if not job.name.startswith("__")
        },
        "schedules": {
            s.name: {
                "cron": s.cron_schedule,
                "timezone": s.execution_timezone,
                "status": s.default_status.value,
                "job": s.job_name,
            }
            for s in _schedules(definitions)
        },
        "sensors": {
            s.name: {
                "status": s.default_status.value,
                "jobs": sorted(t.job_name for t in s.targets),
            }
            for s in sorted(definitions.sensors or [], key=lambda s: s.name)
        },
        "resources": sorted(definitions.resources or {}),
    }


def test_the_code_location_is_the_snapshot(clean_env: pytest.MonkeyPatch) -> None:
    """The default code location's shape equals `definitions_snapshot.json`: a change to an
    asset, job, schedule or sensor shows as a reviewed diff of that file."""
    shape = json.loads(json.dumps(_shape(build_definitions())))
    if os.environ.get(UPDATE_SNAPSHOT):
        SNAPSHOT.write_text(json.dumps(shape, indent=2) + "\n", encoding="utf-8")

    assert shape == json.loads(SNAPSHOT.read_text(encoding="utf-8")), (
        f"the code location changed: rerun with {UPDATE_SNAPSHOT}=1 and review the diff"
    )


def test_calendar_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETL_TIMEZONE", "Europe/Madrid")
    monkeypatch.setenv("ETL_PARTITIONS_START", "2025-06-01")

    built = build_definitions()

    daily = built.resolve_asset_graph().get(dg.AssetKey("daily_sales")).partitions_def
    assert daily.timezone == "Europe/Madrid"
    assert daily.get_first_partition_key() == "2025-06-01"
    assert {s.execution_timezone for s in _schedules(built)} == {"Europe/Madrid"}


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
