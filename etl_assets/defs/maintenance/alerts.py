"""The run-failure alert: record every failed run of the code location, post it to a webhook."""

import datetime as dt

import dagster as dg

from etl_assets.defs.resources import WarehouseResource, WebhookResource
from etl_assets.services.maintenance.alerts import new_failure, record_failure
from etl_assets.services.scrubbing import scrub


def _error(event: dg.DagsterEvent) -> tuple[str, str]:
    """Class and message of what made the run fail, from its RUN_FAILURE event."""
    data = event.event_specific_data
    error = getattr(data, "error", None)
    if error is None:
        # No exception, e.g. run monitoring failed a run past its max runtime: the reason is all.
        reason = getattr(data, "failure_reason", None)
        return (reason.value if reason else "unknown"), event.message or ""
    # Dagster wraps the user's exception (step execution error, retries exhausted); its class
    # is what an operator needs.
    while error.cause is not None:
        error = error.cause
    return error.cls_name or "unknown", f"{event.message}\n{error.message.strip()}"


def _failed_at(context: dg.RunFailureSensorContext) -> dt.datetime:
    record = context.instance.get_run_record_by_id(context.dagster_run.run_id)
    if record is None or record.end_time is None:
        return dt.datetime.now(dt.UTC)
    return dt.datetime.fromtimestamp(record.end_time, dt.UTC)


@dg.run_failure_sensor(
    name="run_failure_alert_sensor",
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Records every failed run in the run_failures table and, when ETL_ALERT_WEBHOOK_URL "
        "is set, posts it there as JSON; secrets are scrubbed from the message."
    ),
)
def run_failure_alert_sensor(
    context: dg.RunFailureSensorContext,
    warehouse: WarehouseResource,
    webhook: WebhookResource,
) -> None:
    """Record the failure, then post it; neither a warehouse nor a webhook error is raised."""
    run = context.dagster_run
    error_class, message = _error(context.failure_event)
    failure = new_failure(
        run_id=run.run_id,
        job_name=run.job_name,
        error_class=error_class,
        message=message,
        failed_at=_failed_at(context),
    )
    # Not raised: a failed tick is replayed, which would post the alert again every interval.
    try:
        with warehouse.engine().begin() as conn:
            recorded = record_failure(conn, failure)
    except Exception as exc:
        # Runs often fail because the warehouse is down; the alert must still go out.
        context.log.error(f"failure of run {run.run_id} not recorded: {scrub(repr(exc))}")
    else:
        state = "recorded" if recorded else "already recorded"
        context.log.info(f"{run.job_name} run {run.run_id} failed ({error_class}): {state}")
    try:
        if webhook.post(failure.as_payload()):
            context.log.info(f"alert for run {run.run_id} posted")
    except Exception as exc:
        context.log.warning(f"alert for run {run.run_id} not posted: {scrub(repr(exc))}")
