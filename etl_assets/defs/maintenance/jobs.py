"""Maintenance jobs: retention cleanup, and pulling exports from a source into the inbox."""

import os
import time
from pathlib import Path

import dagster as dg

from etl_assets.defs.policies import DEFAULT_QUEUE, IO_RETRY, max_runtime, on_queue
from etl_assets.defs.resources import ImportSettingsResource, StorageResource, WarehouseResource
from etl_assets.services.imports import journal
from etl_assets.services.maintenance.cleanup import CleanupPlan, apply_cleanup, plan_cleanup
from etl_assets.services.maintenance.pull import PullError, PullResult, pull_sources

DRY_RUN = "dry run: nothing deleted, pass force: true"
PULL_STATE_FILE = "pull-state.json"
SAMPLE_SIZE = 20


class CleanupConfig(dg.Config):
    """Keep `retention_days` of files and journal rows; delete only with `force: true`."""

    retention_days: int = 90
    force: bool = False


class PullConfig(dg.Config):
    """The directory of `<company>/<file>` exports to pull; it must be inside ETL_PULL_ROOTS."""

    source: str


def _bullets(paths: list[str]) -> dg.MetadataValue:
    return dg.MetadataValue.md("\n".join(f"- `{p}`" for p in paths) or "nothing")


def _plan_metadata(plan: CleanupPlan) -> dict[str, object]:
    return {
        **plan.counts(),
        "bytes": plan.bytes,
        "retention_days": plan.retention_days,
        "cutoff": plan.cutoff.isoformat(),
        "sample": _bullets(plan.sample()),
    }


@dg.op(out=dg.Out(dg.Nothing), retry_policy=IO_RETRY, tags=on_queue(DEFAULT_QUEUE))
def cleanup(
    context: dg.OpExecutionContext,
    config: CleanupConfig,
    warehouse: WarehouseResource,
    storage: StorageResource,
) -> dg.Output:
    """Plan the cleanup, log and record it, and delete only when forced."""
    engine = warehouse.engine()
    plan = plan_cleanup(engine, storage.paths(), config.retention_days, journal.now_utc())
    context.log.info(f"cleanup plan, {plan.summary()}")
    for path in plan.sample():
        context.log.info(f"  {path}")
    result = apply_cleanup(engine, plan, force=config.force)
    metadata = _plan_metadata(plan)
    if result.dry_run:
        context.log.warning(DRY_RUN)
        return dg.Output(None, metadata={**metadata, "outcome": DRY_RUN})
    outcome = (
        f"deleted {len(result.uploads_deleted)} journal rows and {result.files_deleted} files "
        f"({result.bytes_freed:,} bytes)"
    )
    context.log.info(outcome)
    if result.files_kept:
        context.log.warning(
            f"kept {len(result.files_kept)} planned files whose uploads are in use again"
        )
    return dg.Output(
        None,
        metadata={
            **metadata,
            "outcome": outcome,
            "journal_rows_deleted": len(result.uploads_deleted),
            "notifications_deleted": result.notifications_deleted,
            "files_deleted": result.files_deleted,
            "bytes_freed": result.bytes_freed,
            "files_kept": len(result.files_kept),
        },
    )


def _pull_metadata(result: PullResult) -> dict[str, object]:
    return {
        "source": str(result.source),
        "pulled": len(result.pulled),
        "already_pulled": result.already_pulled,
        "waiting": result.waiting,
        "skipped": len(result.skipped),
        "errors": len(result.errors),
        "pulled_files": _bullets([str(p) for p in result.pulled[:SAMPLE_SIZE]]),
    }


@dg.op(out=dg.Out(dg.Nothing), retry_policy=IO_RETRY, tags=on_queue(DEFAULT_QUEUE))
def pull(
    context: dg.OpExecutionContext,
    config: PullConfig,
    storage: StorageResource,
    import_settings: ImportSettingsResource,
) -> dg.Output:
    """Copy new files from the source into the inbox, where the upload sensor registers them."""
    roots = import_settings.allowed_pull_roots()
    if not roots:
        raise dg.Failure(
            "pulling is disabled: ETL_PULL_ROOTS is empty; set it to the directories pulls may "
            f"read from, separated by {os.pathsep!r}",
            allow_retries=False,
        )
    paths = storage.paths()
    try:
        result = pull_sources(
            Path(config.source),
            roots,
            paths.inbox,
            state_file=paths.data_dir / PULL_STATE_FILE,
            settle_seconds=import_settings.settle_seconds,
            now=time.time(),
        )
    except PullError as exc:
        # A refused source stays refused however often it is retried.
        raise dg.Failure(str(exc), allow_retries=False) from exc
    context.log.info(result.summary())
    for problem in result.skipped:
        context.log.warning(f"skipped {problem}")
    if result.errors:
        raise dg.Failure(
            f"{len(result.errors)} file(s) could not be pulled: " + "; ".join(result.errors),
            metadata=_pull_metadata(result),
        )
    return dg.Output(None, metadata=_pull_metadata(result))


@dg.job(
    description="Remove files and journal rows past the retention; a dry run unless forced.",
    tags=max_runtime(1800),
)
def cleanup_job() -> None:
    """The cleanup as a job of one op."""
    cleanup()


@dg.job(
    description="Pull `<company>/<file>` exports from a source inside ETL_PULL_ROOTS.",
    tags=max_runtime(1800),
)
def pull_job() -> None:
    """The pull as a job of one op."""
    pull()
