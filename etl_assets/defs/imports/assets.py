"""Import assets, one per upload kind, partitioned by upload."""

import dagster as dg

from etl_assets.defs.execution import IMPORTS_QUEUE, max_runtime, on_queue
from etl_assets.defs.imports.checks import check_results, check_specs
from etl_assets.defs.imports.partitions import product_upload_partitions, sales_upload_partitions
from etl_assets.defs.resources import ImportSettingsResource, StorageResource, WarehouseResource
from etl_assets.services import journal
from etl_assets.services.companies import options_for
from etl_assets.services.contract import KINDS, Kind
from etl_assets.services.importer import ImportResult, import_upload
from etl_assets.services.registration import landing_path

# Warehouse and file I/O can fail transiently; bad data never raises, so it is never retried.
IO_RETRY = dg.RetryPolicy(
    max_retries=3, delay=2, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)

_TYPES = {
    "text": "text",
    "decimal": "decimal(12,2)",
    "integer": "bigint",
    "timestamp": "timestamptz",
}


def _column_schema(kind: Kind) -> dg.TableSchema:
    spec = KINDS[kind]
    return dg.TableSchema(
        columns=[dg.TableColumn("company", "text", description="Tenant (from the inbox path)")]
        + [dg.TableColumn(c.name, _TYPES[c.type], description=c.description) for c in spec.columns]
        + [
            dg.TableColumn("upload_id", "text", description="Last upload that wrote the row"),
            dg.TableColumn("updated_at", "timestamptz", description="When that happened"),
        ]
    )


def _metadata(result: ImportResult, original_name: str) -> dict[str, object]:
    accepted = result.rows_read - result.rows_rejected if result.status == "completed" else 0
    metadata: dict[str, object] = {
        "dagster/row_count": accepted,
        "dagster/column_schema": _column_schema(result.kind),
        "status": result.status,
        "company": result.company,
        "file": original_name,
        "rows_read": result.rows_read,
        "rows_imported": result.rows_imported,
        "rows_updated": result.rows_updated,
        "rows_unchanged": result.rows_unchanged,
        "rows_rejected": result.rows_rejected,
        "seconds": round(result.seconds, 3),
        "rows_per_second": round(result.rows_per_second),
        "message": result.message,
        "encoding": result.encoding or "xlsx",
    }
    if result.kind == "sales":
        metadata["orphan_skus"] = result.orphan_skus
        # Read by the daily_sales refresh sensor: the days whose aggregates this import changed.
        metadata["days_touched"] = dg.MetadataValue.json(result.days_touched)
    if result.rejects_path:
        metadata["rejects_file"] = dg.MetadataValue.path(result.rejects_path)
    if result.reject_sample:
        lines = ["| row | column | value | reason |", "|---|---|---|---|"]
        lines += [
            f"| {e.row} | {e.column} | {e.value[:40]} | {e.reason} |" for e in result.reject_sample
        ]
        metadata["rejected_rows_preview"] = dg.MetadataValue.md("\n".join(lines))
    return metadata


def _import(
    context: dg.AssetExecutionContext,
    kind: Kind,
    warehouse: WarehouseResource,
    storage: StorageResource,
    import_settings: ImportSettingsResource,
) -> dg.MaterializeResult:
    engine, paths = warehouse.engine(), storage.paths()
    upload_id = context.partition_key
    with engine.connect() as conn:
        record = journal.get(conn, upload_id)
    if record is None or record.company is None:
        # Not transient: retrying cannot make an unregistered upload appear.
        raise dg.Failure(
            f"upload {upload_id!r} is not in the journal; was it registered?", allow_retries=False
        )
    result = import_upload(
        engine,
        landing_path(paths, record),
        upload_id=upload_id,
        company=record.company,
        kind=kind,
        options=options_for(import_settings.company_options(), record.company),
        rejects_path=paths.rejects_file(record.company, upload_id),
        settings=import_settings.import_settings(),
        run_id=context.run.run_id,
        log=context.log,
    )
    return dg.MaterializeResult(
        metadata=_metadata(result, record.original_name),
        check_results=check_results(context.asset_key.to_user_string(), result),
    )


@dg.asset(
    partitions_def=product_upload_partitions,
    group_name="imports",
    kinds={"pandas", "sql"},
    check_specs=check_specs("product_uploads", orphans=False),
    retry_policy=IO_RETRY,
    op_tags=on_queue(IMPORTS_QUEUE),
)
def product_uploads(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    storage: StorageResource,
    import_settings: ImportSettingsResource,
) -> dg.MaterializeResult:
    """Validate one products upload and upsert it into the `products` table."""
    return _import(context, "products", warehouse, storage, import_settings)


@dg.asset(
    partitions_def=sales_upload_partitions,
    group_name="imports",
    kinds={"pandas", "sql"},
    check_specs=check_specs("sales_uploads", orphans=True),
    retry_policy=IO_RETRY,
    op_tags=on_queue(IMPORTS_QUEUE),
)
def sales_uploads(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    storage: StorageResource,
    import_settings: ImportSettingsResource,
) -> dg.MaterializeResult:
    """Validate one sales upload and upsert it into the `sales` table."""
    return _import(context, "sales", warehouse, storage, import_settings)


products_import_job = dg.define_asset_job(
    "products_import_job",
    selection=[product_uploads],
    description="Import one products upload (partition = upload id).",
    tags=max_runtime(900),
)
sales_import_job = dg.define_asset_job(
    "sales_import_job",
    selection=[sales_uploads],
    description="Import one sales upload (partition = upload id).",
    tags=max_runtime(900),
)
IMPORT_JOB_NAMES: dict[Kind, str] = {
    "products": products_import_job.name,
    "sales": sales_import_job.name,
}
