"""The health check job: warehouse, Redis (when configured), disk and inbox, every 15 minutes."""

import dagster as dg

from etl_assets.defs.calendar import Calendar
from etl_assets.defs.policies import DEFAULT_QUEUE, max_runtime, on_queue
from etl_assets.defs.resources import RedisResource, StorageResource, WarehouseResource
from etl_assets.services.maintenance.health import GIB, CheckResult, failed, run_health_checks


class HealthCheckConfig(dg.Config):
    """Disk thresholds: the disk check fails below either minimum (0 disables one)."""

    min_free_bytes: int = GIB
    min_free_fraction: float = 0.05


def _metadata(results: list[CheckResult]) -> dict[str, object]:
    lines = ["| check | ok | detail |", "|---|---|---|"]
    lines += [f"| {r.name} | {'yes' if r.ok else 'NO'} | {r.detail} |" for r in results]
    return {
        "checks_failed": len(failed(results)),
        **{f"{r.name}_ok": r.ok for r in results},
        "results": dg.MetadataValue.md("\n".join(lines)),
    }


@dg.op(out=dg.Out(dg.Nothing), tags=on_queue(DEFAULT_QUEUE))
def health_checks(
    context: dg.OpExecutionContext,
    config: HealthCheckConfig,
    warehouse: WarehouseResource,
    storage: StorageResource,
    redis: RedisResource,
) -> dg.Output:
    """Run every check, log each, and fail naming the checks that did not pass."""
    paths = storage.locations()
    client = redis.client()
    try:
        results = run_health_checks(
            warehouse_url=warehouse.url,
            redis_client=client,
            data_dir=paths.data_dir,
            inbox=paths.inbox,
            min_free_bytes=config.min_free_bytes,
            min_free_fraction=config.min_free_fraction,
        )
    finally:
        if client is not None:
            client.close()
    for result in results:
        log = context.log.info if result.ok else context.log.error
        log(f"{result.name}: {'ok' if result.ok else 'FAILED'} - {result.detail}")
    bad = failed(results)
    if bad:
        # Retrying would only delay the alert; the next scheduled run checks again.
        raise dg.Failure(
            description="health check failed: " + "; ".join(f"{r.name} ({r.detail})" for r in bad),
            metadata=_metadata(results),
            allow_retries=False,
        )
    return dg.Output(None, metadata=_metadata(results))


@dg.job(
    description="Check warehouse, Redis (when configured), free disk and the inbox.",
    tags=max_runtime(1800),
)
def health_check_job() -> None:
    """The health check as a job of one op."""
    health_checks()


def build_health_schedule(calendar: Calendar) -> dg.ScheduleDefinition:
    """The health check every 15 minutes, in the calendar's timezone."""
    return dg.ScheduleDefinition(
        name="health_check_schedule",
        job=health_check_job,
        cron_schedule="*/15 * * * *",
        execution_timezone=calendar.timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Run the health check; a failed run names the failing checks.",
    )
