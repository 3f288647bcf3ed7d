"""The pull job, refusing sources outside ETL_PULL_ROOTS, and its schedule."""

import datetime as dt
import os
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import pytest

from etl_assets.definitions import build_domains
from etl_assets.defs.calendar import Calendar
from etl_assets.defs.maintenance import definitions as maintenance
from etl_assets.defs.maintenance.jobs import pull_job
from etl_assets.defs.maintenance.schedules import NOT_CONFIGURED
from etl_assets.defs.resources import ImportSettingsResource, StorageResource
from etl_assets.services.storage import StoragePaths
from etl_assets_tests.services.maintenance.pull_exports import inbox_files, nightly_source


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The one allowed root."""
    root = tmp_path / "exports"
    root.mkdir()
    return root


@pytest.fixture
def source(root: Path) -> Path:
    """A source with a products export for acme and a sales export for globex."""
    return nightly_source(root)


def _job_resources(paths: StoragePaths, pull_roots: str) -> dict[str, dg.ConfigurableResource]:
    return {
        "storage": StorageResource(data_dir=str(paths.data_dir), inbox_dir=str(paths.inbox)),
        "import_settings": ImportSettingsResource(settle_seconds=0, pull_roots=pull_roots),
    }


def _run_pull(paths: StoragePaths, pull_roots: str, source: Path) -> dg.ExecuteInProcessResult:
    return pull_job.execute_in_process(
        run_config={"ops": {"pull": {"config": {"source": str(source)}}}},
        resources=_job_resources(paths, pull_roots),
        raise_on_error=False,
    )


def _failure(result: dg.ExecuteInProcessResult) -> str:
    [failure] = [e for e in result.all_events if e.is_step_failure]
    return str(failure.step_failure_data.error)


def test_pull_job_pulls_from_a_source_inside_etl_pull_roots(
    paths: StoragePaths, root: Path, source: Path, tmp_path: Path
) -> None:
    result = _run_pull(paths, os.pathsep.join([str(tmp_path / "other"), str(root)]), source)

    [output] = [e for e in result.events_for_node("pull") if e.is_successful_output]
    metadata = {k: v.value for k, v in output.step_output_data.metadata.items()}
    assert result.success
    assert (metadata["pulled"], metadata["already_pulled"], metadata["errors"]) == (2, 0, 0)
    assert metadata["source"] == str(source)
    assert sorted(inbox_files(paths)) == ["acme/products.csv", "globex/sales.csv"]


@pytest.mark.parametrize(
    ("pull_roots", "message"),
    [
        ("", "pulling is disabled: ETL_PULL_ROOTS is empty"),
        ("{tmp}/other", "is outside the allowed roots"),
    ],
)
def test_pull_job_refuses_without_an_allowed_root(
    paths: StoragePaths, source: Path, tmp_path: Path, pull_roots: str, message: str
) -> None:
    result = _run_pull(paths, pull_roots.format(tmp=tmp_path), source)

    assert not result.success
    assert message in _failure(result)
    assert inbox_files(paths) == {}


def _pull_schedule(schedules: list) -> dg.ScheduleDefinition:
    [schedule] = [s for s in schedules if s.name == "pull_schedule"]
    return schedule


def test_pull_schedule_requests_a_pull_of_the_source_at_two() -> None:
    domain = maintenance.defs(Calendar(timezone="America/New_York"), pull_source="/srv/exports")
    schedule = _pull_schedule(domain.schedules)
    when = dt.datetime(2025, 3, 1, 2, 0, tzinfo=ZoneInfo("America/New_York"))

    with dg.build_schedule_context(scheduled_execution_time=when) as context:
        request = schedule(context)

    assert isinstance(request, dg.RunRequest)
    assert request.run_config["ops"] == {"pull": {"config": {"source": "/srv/exports"}}}
    assert dg.validate_run_config(pull_job, request.run_config)
    assert (schedule.cron_schedule, schedule.execution_timezone) == (
        "0 2 * * *",
        "America/New_York",
    )
    assert schedule.job_name == "pull_job"


@pytest.mark.parametrize("source", [None, "/srv/exports"])
def test_definitions_pass_etl_pull_source_to_the_schedule(
    monkeypatch: pytest.MonkeyPatch, source: str | None
) -> None:
    if source is None:
        monkeypatch.delenv("ETL_PULL_SOURCE", raising=False)
    else:
        monkeypatch.setenv("ETL_PULL_SOURCE", source)
    schedule = _pull_schedule(list(build_domains(Calendar()).schedules))
    when = dt.datetime(2025, 3, 1, 2, 0, tzinfo=dt.UTC)

    with dg.build_schedule_context(scheduled_execution_time=when) as context:
        request = schedule(context)

    if source is None:
        assert isinstance(request, dg.SkipReason)
        assert request.skip_message == NOT_CONFIGURED
        assert "ETL_PULL_SOURCE is not set" in NOT_CONFIGURED
    else:
        assert isinstance(request, dg.RunRequest)
        assert request.run_config["ops"]["pull"]["config"]["source"] == source
