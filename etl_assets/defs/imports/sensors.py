"""The upload sensor: registers settled inbox files and requests one import run per company."""

import json
import time

import dagster as dg
from sqlalchemy import Engine

from etl_assets.defs.imports.assets import IMPORT_ASSETS, import_job
from etl_assets.defs.partitions import companies
from etl_assets.defs.resources import ImportSettingsResource, StorageResource, WarehouseResource
from etl_assets.services.imports import journal
from etl_assets.services.imports.batches import MAX_ATTEMPTS, Batch, Plan, plan_batches
from etl_assets.services.imports.companies import CompaniesFile
from etl_assets.services.imports.registration import ScanResult, scan_inbox
from etl_assets.services.storage import StoragePaths

COMPANY_TAG = "etl/company"
UPLOADS_TAG = "etl/uploads"
PARTITION_TAG = "dagster/partition"
IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
RUN_ENDS = (dg.DagsterEventType.RUN_FAILURE, dg.DagsterEventType.RUN_CANCELED)
# Unfinished uploads read per tick; a larger backlog is taken over the following ticks.
UNFINISHED_LIMIT = 5000


def _cursor(cursor: str | None) -> dict:
    return json.loads(cursor) if cursor else {}


def _new_cursor(max_mtime: float | None, problems: list[str]) -> str | None:
    state = {"max_mtime": max_mtime, "problems": problems}
    kept = {key: value for key, value in state.items() if value}
    return json.dumps(kept) if kept else None


def _busy_companies(instance: dg.DagsterInstance) -> set[str]:
    """Companies a live run is importing: a sensor batch, a backfill or a UI materialisation."""
    busy = set()
    for run in instance.get_runs(dg.RunsFilter(statuses=IN_FLIGHT)):
        imports = run.job_name == import_job.name or bool(
            run.asset_selection and run.asset_selection & IMPORT_ASSETS
        )
        company = run.tags.get(PARTITION_TAG)
        if imports and company:
            busy.add(company)
    return busy


def _last_run(instance: dg.DagsterInstance, upload: journal.UploadRecord) -> str:
    """What became of the run that last held an upload, for the journal."""
    if upload.status == "processing" and upload.run_id:
        run = instance.get_run_by_id(upload.run_id)
    else:
        runs = instance.get_runs(
            dg.RunsFilter(job_name=import_job.name, tags={COMPANY_TAG: upload.company or ""}),
            limit=1,
        )
        run = runs[0] if runs else None
    if run is None:
        return "its import run was not found"
    ending = f"import run {run.run_id} ended {run.status.value} before finishing it"
    ends = instance.all_logs(run.run_id, of_type=set(RUN_ENDS))
    reason = ends[-1].dagster_event.message if ends and ends[-1].dagster_event else None
    return f"{ending} ({reason})" if reason else ending


def _offer_message(instance: dg.DagsterInstance, upload: journal.UploadRecord) -> str:
    attempt = upload.attempts + 1
    if upload.attempts == 0:
        return f"offered for import (attempt 1 of {MAX_ATTEMPTS})"
    return f"offered again (attempt {attempt} of {MAX_ATTEMPTS}): {_last_run(instance, upload)}"


def _give_up_message(instance: dg.DagsterInstance, upload: journal.UploadRecord) -> str:
    return (
        f"not imported after {MAX_ATTEMPTS} attempts: {_last_run(instance, upload)}; re-import "
        f"it by materialising {upload.kind} for {upload.company} with config upload_ids: "
        f'["{upload.upload_id}"]'
    )


def _run_request(batch: Batch) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=batch.run_key,
        job_name=import_job.name,
        partition_key=batch.company,
        asset_selection=[dg.AssetKey(kind) for kind in batch.kinds],
        run_config={
            "ops": {kind: {"config": {"upload_ids": batch.ids_of(kind)}} for kind in batch.kinds}
        },
        tags={COMPANY_TAG: batch.company, UPLOADS_TAG: str(len(batch.uploads))},
    )


@dg.sensor(
    jobs=[import_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
    # A tick is a directory scan and two indexed queries; a short interval is most of what a
    # dropped file waits for after its settle time.
    minimum_interval_seconds=5,
    description="Registers files dropped in the inbox and requests one import run per company.",
)
def upload_sensor(
    context: dg.SensorEvaluationContext,
    warehouse: WarehouseResource,
    storage: StorageResource,
    import_settings: ImportSettingsResource,
) -> dg.SensorResult:
    """Scan the inbox, then request a batch import for each company no live run holds.

    The batch is the company's unfinished uploads in drop order, up to the batch limits; files
    arriving while it runs form the next one. An upload still unfinished once no run holds it
    (its run failed, was terminated, lost its worker) is offered again under a new run key, up
    to `MAX_ATTEMPTS`, then marked `failed`. A company whose companies-file entry is invalid
    (every company, if the file cannot be read) is held: its files stay in the inbox, its
    uploads wait saying why, and the problem is logged once per change. The cursor records
    those problems and the newest mtime registered (for observability only: files leave the
    inbox when registered).
    """
    engine, paths = warehouse.engine(), storage.paths()
    previous = _cursor(context.cursor)
    companies_file = import_settings.companies()
    scan = _scan(engine, paths, companies_file, import_settings.settle_seconds)
    # Live runs first, then the journal: a run that ends in between leaves its uploads finished.
    busy = _busy_companies(context.instance)
    with engine.connect() as conn:
        unfinished = journal.unfinished(conn, UNFINISHED_LIMIT)
    held = {
        upload.company: problem
        for upload in unfinished
        if upload.company and (problem := companies_file.problem(upload.company))
    }
    plan = plan_batches(unfinished, busy | set(held), import_settings.batch_limits())
    _journal_plan(context.instance, engine, plan, held)
    problems = companies_file.problems()
    _log_tick(context, scan, plan, problems, problems != previous.get("problems", []))
    # A company becomes a partition (of imports and reports) with its first batch.
    new_companies = sorted(
        batch.company
        for batch in plan.batches
        if not context.instance.has_dynamic_partition(companies.name, batch.company)
    )
    seen = [m for m in (previous.get("max_mtime"), scan.max_mtime) if m is not None]
    return dg.SensorResult(
        run_requests=[_run_request(batch) for batch in plan.batches],
        dynamic_partitions_requests=(
            [companies.build_add_request(new_companies)] if new_companies else []
        ),
        cursor=_new_cursor(max(seen) if seen else None, problems),
    )


def _scan(
    engine: Engine, paths: StoragePaths, companies_file: CompaniesFile, settle_seconds: int
) -> ScanResult:
    """Register settled files; an unreadable companies file holds every company's files back,
    a bad entry only its own."""
    if companies_file.error:
        return ScanResult()
    return scan_inbox(
        engine,
        paths,
        companies_file.options,
        settle_seconds=settle_seconds,
        now=time.time(),
        held=set(companies_file.invalid),
    )


def _journal_plan(
    instance: dg.DagsterInstance, engine: Engine, plan: Plan, held: dict[str, str]
) -> None:
    """Record what this tick decided: why held uploads wait, which are given up, which offered."""
    with engine.begin() as conn:
        for company, problem in held.items():
            journal.note_held(conn, company, f"waiting for the companies file: {problem}")
        for upload in plan.exhausted:
            journal.give_up(conn, upload.upload_id, _give_up_message(instance, upload))
        for batch in plan.batches:
            for upload in batch.uploads:
                journal.mark_offered(conn, upload.upload_id, _offer_message(instance, upload))


def _log_tick(
    context: dg.SensorEvaluationContext,
    scan: ScanResult,
    plan: Plan,
    problems: list[str],
    problems_changed: bool,
) -> None:
    if scan.registered or scan.rejected or scan.duplicates:
        context.log.info(
            f"registered {len(scan.registered)}, rejected {len(scan.rejected)}, "
            f"duplicates {len(scan.duplicates)}, waiting to settle {scan.waiting}"
        )
    for error in scan.errors:
        context.log.warning(f"left in the inbox, will retry: {error}")
    if problems_changed:
        for problem in problems:
            context.log.error(f"uploads held back until the companies file is fixed: {problem}")
        if not problems:
            context.log.info("the companies file is valid again: held uploads are imported")
    for upload in plan.exhausted:
        context.log.warning(f"gave up on {upload.upload_id} after {MAX_ATTEMPTS} attempts")
    for batch in plan.batches:
        context.log.info(f"batch for {batch.company}: {', '.join(batch.upload_ids)}")
