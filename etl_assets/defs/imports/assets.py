"""The warehouse tables `products` and `sales`, partitioned by company: each materialisation
imports a batch of the company's uploads."""

import dagster as dg

from etl_assets.contract import KINDS, Kind
from etl_assets.defs.imports.checks import check_results, check_specs
from etl_assets.defs.partitions import companies
from etl_assets.defs.policies import IMPORTS_GROUP, IMPORTS_QUEUE, IO_RETRY, max_runtime, on_queue
from etl_assets.defs.resources import ImportSettingsResource, StorageResource, WarehouseResource
from etl_assets.services.imports.batches import BatchError
from etl_assets.services.imports.results import SAMPLE_SIZE, BatchResult

# A batch is at most ETL_IMPORT_BATCH_MAX_UPLOADS files and ETL_IMPORT_BATCH_MAX_BYTES bytes.
IMPORT_MAX_RUNTIME_SECONDS = 3600
PREVIEW_LENGTH = 80

_TYPES = {
    "text": "text",
    "decimal": "decimal(12,2)",
    "integer": "bigint",
    "timestamp": "timestamptz",
}


class ImportConfig(dg.Config):
    """Which uploads to import. Left out: every `received` upload of the company (what the
    upload sensor and a plain "Materialize" do); given: exactly these, whatever their status."""

    upload_ids: list[str] | None = None


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


def _cell(text: str) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= PREVIEW_LENGTH else text[: PREVIEW_LENGTH - 1] + "…"


def _batch_table(batch: BatchResult) -> dg.MetadataValue:
    lines = [
        "| file | status | read | imported | updated | rejected | message |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {_cell(e.original_name)} | {e.status} | {e.rows_read} | {e.rows_imported} "
        f"| {e.rows_updated} | {e.rows_rejected} | {_cell(e.message)} |"
        for e in batch.entries
    ]
    return dg.MetadataValue.md("\n".join(lines) if batch.entries else "nothing to import")


def _rejects_preview(batch: BatchResult) -> dg.MetadataValue:
    lines = ["| file | row | column | value | reason |", "|---|---|---|---|---|"]
    lines += [
        f"| {_cell(entry.original_name)} | {error.row} | {_cell(error.column)} "
        f"| {_cell(error.value[:40])} | {_cell(error.reason)} |"
        for entry in batch.entries
        for error in entry.reject_sample
    ][:SAMPLE_SIZE]
    return dg.MetadataValue.md("\n".join(lines))


def _metadata(batch: BatchResult) -> dict[str, object]:
    metadata: dict[str, object] = {
        "dagster/row_count": batch.table_rows,
        "dagster/column_schema": _column_schema(batch.kind),
        "company": batch.company,
        "uploads": len(batch.entries),
        "uploads_completed": len(batch.with_status("completed")),
        "uploads_rejected": len(batch.with_status("rejected")),
        "rows_read": batch.total("rows_read"),
        "rows_imported": batch.total("rows_imported"),
        "rows_updated": batch.total("rows_updated"),
        "rows_rejected": batch.total("rows_rejected"),
        "seconds": round(batch.seconds, 3),
        "batch": _batch_table(batch),
    }
    if any(entry.reject_sample for entry in batch.entries):
        metadata["rejected_rows_preview"] = _rejects_preview(batch)
    rejects = [entry.rejects_path for entry in batch.entries if entry.rejects_path]
    if rejects:
        metadata["rejects_files"] = dg.MetadataValue.md("\n".join(f"- `{p}`" for p in rejects))
    if batch.kind == "sales":
        metadata["orphan_skus"] = batch.orphan_skus
        # Read by the daily_sales refresh sensor: the days whose aggregates this batch changed.
        metadata["days_touched"] = dg.MetadataValue.json(batch.days_touched)
    return metadata


def _import(
    context: dg.AssetExecutionContext,
    kind: Kind,
    config: ImportConfig,
    warehouse: WarehouseResource,
    storage: StorageResource,
    import_settings: ImportSettingsResource,
) -> dg.MaterializeResult:
    # Imported here, not at the top: pandas, pandera and openpyxl load in the import step only,
    # not in every run process that loads the code location.
    from etl_assets.services.imports.importer import import_batch

    company = context.partition_key
    companies_file = import_settings.companies()
    problem = companies_file.problem(company)
    if problem:
        # Read with default options, the files would be misread: they wait, untouched.
        raise dg.Failure(
            f"{company}'s uploads wait until its companies file entry is fixed: {problem}",
            allow_retries=False,
        )
    try:
        batch = import_batch(
            warehouse.engine(),
            storage.paths(),
            company=company,
            kind=kind,
            upload_ids=config.upload_ids,
            company_options=companies_file.options,
            settings=import_settings.import_settings(),
            run_id=context.run.run_id,
            log=context.log,
        )
    except BatchError as exc:
        # Not transient: retrying cannot make another company's or an unknown upload importable.
        raise dg.Failure(str(exc), allow_retries=False) from exc
    return dg.MaterializeResult(metadata=_metadata(batch), check_results=check_results(kind, batch))


def _table(kind: Kind, description: str, deps: list[dg.AssetsDefinition]) -> dg.AssetsDefinition:
    """The warehouse table of one kind as an asset partitioned by company."""

    @dg.asset(
        name=kind,
        description=description,
        partitions_def=companies,
        group_name=IMPORTS_GROUP,
        kinds={"pandas", "sql"},
        deps=deps,
        check_specs=check_specs(kind, orphans=kind == "sales"),
        retry_policy=IO_RETRY,
        op_tags=on_queue(IMPORTS_QUEUE),
    )
    def table(
        context: dg.AssetExecutionContext,
        config: ImportConfig,
        warehouse: WarehouseResource,
        storage: StorageResource,
        import_settings: ImportSettingsResource,
    ) -> dg.MaterializeResult:
        return _import(context, kind, config, warehouse, storage, import_settings)

    return table


products = _table(
    "products",
    "The `products` table of one company: imports its products uploads in drop order.",
    [],
)
sales = _table(
    "sales",
    "The `sales` table of one company: imports its sales uploads in drop order, after its "
    "products when a batch holds both.",
    [products],
)


import_job = dg.define_asset_job(
    "import_job",
    selection=[products, sales],
    description=(
        "Import a company's uploads (partition = company): with no config every `received` "
        "upload, with `upload_ids` exactly those."
    ),
    # The upload sensor re-offers what a dead import run left unfinished, counting attempts;
    # the daemon's run retries (dagster.yaml) would import the same batch a second time.
    tags={**max_runtime(IMPORT_MAX_RUNTIME_SECONDS), "dagster/max_retries": "0"},
)
IMPORT_ASSETS = frozenset({products.key, sales.key})
