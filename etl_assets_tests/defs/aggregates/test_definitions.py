"""The aggregates domain in the code location."""

import dagster as dg

from etl_assets.defs.aggregates.jobs import daily_sales_job
from etl_assets.warehouse.schema import daily_sales


def test_code_location_has_the_aggregates_domain() -> None:
    from etl_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    node = graph.get(dg.AssetKey("daily_sales"))
    assert node.group_name == "aggregates"
    assert isinstance(node.partitions_def, dg.DailyPartitionsDefinition)
    assert node.backfill_policy == dg.BackfillPolicy.single_run()
    columns = node.metadata["dagster/column_schema"].columns
    assert [c.name for c in columns] == [c.name for c in daily_sales.columns]
    assert defs.resolve_job_def("daily_sales_job").partitions_def == node.partitions_def
    assert defs.resolve_job_def("rebuild_aggregates_job").tags["etl/destructive"] == "true"
    sensor = defs.resolve_sensor_def("daily_sales_refresh_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert defs.resolve_schedule_def("daily_sales_schedule").cron_schedule == "0 1 * * *"
    assert daily_sales_job.name == "daily_sales_job"
