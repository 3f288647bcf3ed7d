"""The monthly sales report asset materialised in process, by partition and by a plain tag."""

from pathlib import Path

import dagster as dg
from sqlalchemy import Engine

from etl_assets.defs.calendar import Calendar
from etl_assets.defs.reports.assets import build_monthly_sales_report
from etl_assets.services.storage import StoragePaths
from etl_assets_tests.services.reports.reports_dataset import (
    NAMES,
    ROWS,
    TZ,
    expected_report,
    load_month,
)


def test_materialize_one_report_partition(
    engine: Engine, resources: dict, paths: StoragePaths, instance: dg.DagsterInstance
) -> None:
    load_month(engine)
    instance.add_dynamic_partitions("companies", ["acme", "globex"])
    asset = build_monthly_sales_report(Calendar(timezone=TZ, start="2025-01-01"))
    key = dg.MultiPartitionKey({"month": "2025-12-01", "company": "acme"})

    result = dg.materialize([asset], instance=instance, resources=resources, partition_key=key)

    assert result.success
    [materialization] = result.asset_materializations_for_node("monthly_sales_report")
    assert materialization.partition == key
    metadata = {k: v.value for k, v in materialization.metadata.items()}
    revenue, units, transactions, returns = expected_report(ROWS, NAMES)["totals"]
    directory = paths.report_dir("acme", "2025-12")
    for ext in ("csv", "json", "xml", "pdf"):
        assert metadata[f"{ext}_file"] == str(directory / f"monthly_sales_acme_2025-12.{ext}")
        assert Path(metadata[f"{ext}_file"]).is_file()
    assert metadata["dagster/row_count"] == 31
    assert metadata["revenue"] == float(revenue)
    assert (metadata["units"], metadata["transactions"], metadata["returns"]) == (
        units,
        transactions,
        returns,
    )
    assert not (paths.data_dir / "reports" / "globex").exists()


def test_report_launched_with_a_plain_partition_tag(
    engine: Engine, resources: dict, paths: StoragePaths, instance: dg.DagsterInstance
) -> None:
    """`dagster job launch --tags '{"dagster/partition": "acme|2025-12-01"}'` (README) works."""
    load_month(engine)
    instance.add_dynamic_partitions("companies", ["acme"])
    asset = build_monthly_sales_report(Calendar(timezone=TZ, start="2025-01-01"))
    job = dg.Definitions(
        assets=[asset],
        jobs=[dg.define_asset_job("reports", selection=[asset])],
        resources=resources,
    ).resolve_job_def("reports")

    result = job.execute_in_process(
        instance=instance, tags={"dagster/partition": "acme|2025-12-01"}
    )

    assert result.success
    assert (paths.report_dir("acme", "2025-12") / "monthly_sales_acme_2025-12.pdf").is_file()
