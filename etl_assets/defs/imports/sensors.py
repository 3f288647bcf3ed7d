"""The upload sensor: registers settled inbox files and requests one import run per upload."""

import json
import time

import dagster as dg

from etl_assets.defs.imports.assets import IMPORT_JOB_NAMES, products_import_job, sales_import_job
from etl_assets.defs.imports.partitions import PARTITIONS_BY_KIND
from etl_assets.defs.partitions import companies
from etl_assets.defs.resources import ImportSettingsResource, StorageResource, WarehouseResource
from etl_assets.services.contract import Kind
from etl_assets.services.registration import pending_imports, scan_inbox


def _max_mtime(cursor: str | None) -> float | None:
    return json.loads(cursor).get("max_mtime") if cursor else None


@dg.sensor(
    jobs=[products_import_job, sales_import_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=10,
    description="Registers files dropped in the inbox and requests their import, once per content.",
)
def upload_sensor(
    context: dg.SensorEvaluationContext,
    warehouse: WarehouseResource,
    storage: StorageResource,
    import_settings: ImportSettingsResource,
) -> dg.SensorResult:
    """Scan the inbox, then offer every `received` upload for import.

    Run keys are upload ids (tenant + content hash), so an upload is imported once however often
    it is offered; offering every `received` upload again repairs a crash between landing a file
    and requesting its run. The cursor records the newest mtime registered, for observability:
    files leave the inbox when registered, so nothing is filtered by it and a file copied in
    with an old mtime is still picked up.
    """
    engine, paths = warehouse.engine(), storage.paths()
    scan = scan_inbox(
        engine,
        paths,
        import_settings.company_options(),
        settle_seconds=import_settings.settle_seconds,
        now=time.time(),
    )
    pending = pending_imports(engine, paths)
    new_keys: dict[Kind, list[str]] = {}
    for upload in pending:
        partitions = PARTITIONS_BY_KIND[upload.kind]
        if not context.instance.has_dynamic_partition(partitions.name, upload.upload_id):
            new_keys.setdefault(upload.kind, []).append(upload.upload_id)
    # A company becomes a report partition with its first upload offered for import.
    new_companies = sorted(
        company
        for company in {upload.company for upload in pending}
        if not context.instance.has_dynamic_partition(companies.name, company)
    )
    if scan.registered or scan.rejected or scan.duplicates:
        context.log.info(
            f"registered {len(scan.registered)}, rejected {len(scan.rejected)}, "
            f"duplicates {len(scan.duplicates)}, waiting to settle {scan.waiting}"
        )
    for error in scan.errors:
        context.log.warning(f"left in the inbox, will retry: {error}")
    seen = [m for m in (_max_mtime(context.cursor), scan.max_mtime) if m is not None]
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=upload.upload_id,
                job_name=IMPORT_JOB_NAMES[upload.kind],
                partition_key=upload.upload_id,
                tags={
                    "etl/company": upload.company,
                    "etl/kind": upload.kind,
                    "etl/upload_id": upload.upload_id,
                },
            )
            for upload in pending
        ],
        dynamic_partitions_requests=[
            PARTITIONS_BY_KIND[kind].build_add_request(keys) for kind, keys in new_keys.items()
        ]
        + ([companies.build_add_request(new_companies)] if new_companies else []),
        cursor=json.dumps({"max_mtime": max(seen)}) if seen else context.cursor,
    )
