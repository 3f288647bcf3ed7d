"""The reports domain in the code location."""

import dagster as dg

from etl_assets.definitions import defs


def test_code_location_has_the_reports_domain() -> None:
    repository = defs.get_repository_def()
    assert {"monthly_reports_job", "export_job"} <= {j.name for j in repository.get_all_jobs()}
    schedule = repository.get_schedule_def("monthly_reports_schedule")
    assert schedule.cron_schedule == "0 3 1 * *"
    assert schedule.job_name == "monthly_reports_job"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    groups = repository.assets_defs_by_key[dg.AssetKey("monthly_sales_report")].group_names_by_key
    assert groups == {dg.AssetKey("monthly_sales_report"): "reports"}
