"""The cleanup job, a dry run unless forced, and its schedule with the configured retention."""

import datetime as dt
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
from sqlalchemy import Engine

from etl_assets.definitions import build_domains
from etl_assets.defs.calendar import Calendar
from etl_assets.defs.maintenance import definitions as maintenance
from etl_assets.defs.maintenance.jobs import DRY_RUN, cleanup_job
from etl_assets.services.imports import journal
from etl_assets.services.storage import StoragePaths
from etl_assets_tests.services.maintenance.cleanup_uploads import journalled, journalled_upload


def _output_metadata(result: dg.ExecuteInProcessResult) -> dict[str, object]:
    [output] = [e for e in result.events_for_node("cleanup") if e.is_successful_output]
    return {k: v.value for k, v in output.step_output_data.metadata.items()}


def test_cleanup_job_is_a_dry_run_unless_forced(
    engine: Engine, paths: StoragePaths, resources: dict
) -> None:
    old = journal.now_utc() - dt.timedelta(days=40)
    upload_id, landing, rejects = journalled_upload(
        engine, paths, b"old", status="completed", received_at=old, finished_at=old
    )
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("companies", ["acme"])

        def run(force: bool) -> dg.ExecuteInProcessResult:
            config = {"retention_days": 30, "force": force}
            return cleanup_job.execute_in_process(
                run_config={"ops": {"cleanup": {"config": config}}},
                resources=resources,
                instance=instance,
            )

        dry = run(force=False)
        dry_metadata = _output_metadata(dry)
        assert landing.exists()
        assert rejects.exists()
        assert journalled(engine) == {upload_id}
        forced = run(force=True)
        forced_metadata = _output_metadata(forced)
        companies_left = instance.get_dynamic_partitions("companies")

    assert dry.success
    assert forced.success
    assert dry_metadata["outcome"] == DRY_RUN == "dry run: nothing deleted, pass force: true"
    assert (dry_metadata["journal_rows"], dry_metadata["landing_files"]) == (1, 1)
    assert dry_metadata["rejects_files"] == 1
    assert dry_metadata["retention_days"] == 30
    assert str(landing) in str(dry_metadata["sample"])
    assert forced_metadata["journal_rows_deleted"] == 1
    assert forced_metadata["files_deleted"] == 2
    assert not landing.exists()
    assert not rejects.exists()
    assert journalled(engine) == set()
    # Partitions are companies, not uploads: deleting an upload's rows keeps its company.
    assert companies_left == ["acme"]


def _schedule(domain_schedules: list, name: str) -> dg.ScheduleDefinition:
    [schedule] = [s for s in domain_schedules if s.name == name]
    return schedule


def test_cleanup_schedule_requests_a_forced_cleanup_with_the_retention() -> None:
    domain = maintenance.defs(Calendar(timezone="Europe/Madrid"), retention_days=30)
    schedule = _schedule(domain.schedules, "cleanup_schedule")
    when = dt.datetime(2025, 3, 1, 3, 30, tzinfo=ZoneInfo("Europe/Madrid"))

    with dg.build_schedule_context(scheduled_execution_time=when) as context:
        request = schedule(context)

    assert isinstance(request, dg.RunRequest)
    assert request.run_config["ops"] == {
        "cleanup": {"config": {"retention_days": 30, "force": True}}
    }
    assert dg.validate_run_config(cleanup_job, request.run_config)
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("30 3 * * *", "Europe/Madrid")
    assert schedule.job_name == "cleanup_job"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING


@pytest.mark.parametrize(("raw", "days"), [(None, 90), ("30", 30)])
def test_definitions_pass_etl_retention_days_to_the_schedule(
    monkeypatch: pytest.MonkeyPatch, raw: str | None, days: int
) -> None:
    if raw is None:
        monkeypatch.delenv("ETL_RETENTION_DAYS", raising=False)
    else:
        monkeypatch.setenv("ETL_RETENTION_DAYS", raw)
    schedules = list(build_domains(Calendar()).schedules)
    when = dt.datetime(2025, 3, 1, 3, 30, tzinfo=dt.UTC)

    with dg.build_schedule_context(scheduled_execution_time=when) as context:
        request = _schedule(schedules, "cleanup_schedule")(context)

    assert isinstance(request, dg.RunRequest)
    assert request.run_config["ops"]["cleanup"]["config"]["retention_days"] == days


@pytest.mark.parametrize("raw", ["0", "-5", "ninety", "1.5"])
def test_a_bad_etl_retention_days_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv("ETL_RETENTION_DAYS", raw)

    with pytest.raises(ValueError, match="ETL_RETENTION_DAYS must be a whole number") as error:
        build_domains(Calendar())

    assert repr(raw) in str(error.value)
