"""Jobs: `monthly_reports_job` (the report asset) and the on-demand `export_job`."""

import dagster as dg
from pydantic import Field

from etl_assets.defs.calendar import Calendar
from etl_assets.defs.policies import IO_RETRY, REPORTS_QUEUE, max_runtime, on_queue
from etl_assets.defs.reports.assets import MONTHLY_SALES_REPORT
from etl_assets.defs.resources import StorageResource, WarehouseResource
from etl_assets.services.reports.exports import ExportRequestError, export_dataset, export_request

monthly_reports_job = dg.define_asset_job(
    "monthly_reports_job",
    selection=[MONTHLY_SALES_REPORT],
    description="Write the monthly sales report of one company and month.",
    tags=max_runtime(1800),
)


class ExportConfig(dg.Config):
    """What to export; start and end are local days in ETL_TIMEZONE, both inclusive."""

    company: str = Field(description="Company slug")
    dataset: str = Field(description="products, sales or daily_sales")
    format: str = Field(default="csv", description="csv, json (one array) or xml")
    start: str | None = Field(default=None, description="First day, YYYY-MM-DD (not products)")
    end: str | None = Field(default=None, description="Last day, YYYY-MM-DD, inclusive")


def build_export_job(calendar: Calendar) -> dg.JobDefinition:
    """The export job; date ranges are days in the calendar's timezone."""

    @dg.op(out=dg.Out(dg.Nothing), retry_policy=IO_RETRY, tags=on_queue(REPORTS_QUEUE))
    def dataset_export(
        context: dg.OpExecutionContext,
        config: ExportConfig,
        warehouse: WarehouseResource,
        storage: StorageResource,
    ) -> dg.Output:
        """Stream one company's dataset into a file under `$ETL_DATA_DIR/exports/<company>/`."""
        try:
            request = export_request(
                config.company, config.dataset, config.format, config.start, config.end
            )
        except ExportRequestError as exc:
            # Bad config cannot get better by retrying.
            raise dg.Failure(f"invalid export config: {exc}", allow_retries=False) from exc
        path = storage.paths().exports / request.company / request.file_name(context.run_id[:8])
        result = export_dataset(warehouse.engine(), request, path, timezone=calendar.timezone)
        log = context.log.warning if result.rows == 0 else context.log.info
        log(f"exported {result.rows} {request.dataset} rows of {request.company} to {result.path}")
        return dg.Output(
            None,
            metadata={
                "path": dg.MetadataValue.path(str(result.path)),
                "dagster/row_count": result.rows,
                "rows": result.rows,
                "bytes": result.bytes,
                "company": request.company,
                "dataset": request.dataset,
                "format": request.format,
            },
        )

    @dg.job(
        name="export_job",
        description="Export one company's products, sales or daily_sales to CSV, JSON or XML.",
        tags=max_runtime(1800),
    )
    def export_job() -> None:
        dataset_export()

    return export_job
