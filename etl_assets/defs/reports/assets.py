"""The monthly sales report: one partition per month and company, four files each."""

import datetime as dt

import dagster as dg

from etl_assets.defs.calendar import Calendar
from etl_assets.defs.policies import IO_RETRY, REPORTS_GROUP, REPORTS_QUEUE, on_queue
from etl_assets.defs.reports.partitions import COMPANY, MONTH, monthly_company_partitions
from etl_assets.defs.resources import StorageResource, WarehouseResource
from etl_assets.services.reports.model import ReportResult
from etl_assets.services.reports.monthly import generate_monthly_report

MONTHLY_SALES_REPORT = dg.AssetKey("monthly_sales_report")


def report_metadata(result: ReportResult) -> dict[str, object]:
    """File paths, row counts and totals of one report, for the asset's materialisation."""
    report, files, totals = result.report, result.files, result.report.totals
    top = ["| # | sku | units | revenue |", "|---|---|---|---|"] + [
        f"| {p.rank} | {p.sku} | {p.units} | {p.revenue} |" for p in report.top_products[:5]
    ]
    return {
        "dagster/row_count": len(report.days),
        "company": report.company,
        "month": report.label,
        "timezone": report.timezone,
        "csv_file": dg.MetadataValue.path(str(files.csv)),
        "json_file": dg.MetadataValue.path(str(files.json)),
        "xml_file": dg.MetadataValue.path(str(files.xml)),
        "pdf_file": dg.MetadataValue.path(str(files.pdf)),
        "days": len(report.days),
        "days_with_sales": sum(1 for d in report.days if d.transactions),
        "top_products": len(report.top_products),
        # A float, so the UI plots it; the files carry the exact amount.
        "revenue": float(totals.revenue),
        "units": totals.units,
        "transactions": totals.transactions,
        "returns": totals.returns,
        "top_products_preview": dg.MetadataValue.md("\n".join(top)),
    }


def build_monthly_sales_report(calendar: Calendar) -> dg.AssetsDefinition:
    """The `monthly_sales_report` asset, partitioned by the calendar's months and companies."""

    @dg.asset(
        name=MONTHLY_SALES_REPORT.path[0],
        partitions_def=monthly_company_partitions(calendar),
        # Lineage only: a company's report reads that company's `sales` and `products` (Dagster
        # maps the report's `company` dimension onto their partitions).
        deps=["sales", "products"],
        group_name=REPORTS_GROUP,
        kinds={"sql", "pdf"},
        retry_policy=IO_RETRY,
        op_tags=on_queue(REPORTS_QUEUE),
    )
    def monthly_sales_report(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, storage: StorageResource
    ) -> dg.MaterializeResult:
        """One company's month of sales as CSV, JSON, XML and a PDF with a daily revenue chart."""
        # A run launched with only a `dagster/partition` tag carries the key as "company|month".
        partitions = monthly_company_partitions(calendar)
        keys = partitions.get_partition_key_from_str(context.partition_key).keys_by_dimension
        company, month = keys[COMPANY], dt.date.fromisoformat(keys[MONTH])
        directory = storage.paths().report_dir(company, f"{month:%Y-%m}")
        result = generate_monthly_report(
            warehouse.engine(), company, month, calendar.timezone, directory
        )
        totals = result.report.totals
        context.log.info(
            f"report {company} {month:%Y-%m}: revenue {totals.revenue}, "
            f"{totals.transactions} transactions, written to {directory}"
        )
        return dg.MaterializeResult(metadata=report_metadata(result))

    return monthly_sales_report
