"""The notification sensor: owes and sends the messages about uploads that ended."""

import datetime as dt

import dagster as dg

from etl_assets.defs.resources import ImportSettingsResource, WarehouseResource
from etl_assets.services.notifications.delivery import notification_tick


@dg.sensor(
    default_status=dg.DefaultSensorStatus.RUNNING,
    # Each tick sends a bounded batch with a time budget, so ticks stay short.
    minimum_interval_seconds=15,
    description=(
        "POSTs a signed JSON message to a company's notify_url when one of its uploads ends "
        "(completed, rejected, failed, duplicate); retries with backoff, records deliveries "
        "in the notifications table."
    ),
)
def notification_sensor(
    context: dg.SensorEvaluationContext,
    warehouse: WarehouseResource,
    import_settings: ImportSettingsResource,
) -> dg.SensorResult:
    """One tick of the service; the tick's text says what was delivered, failed and pending.

    The cursor is the instant after which the journal is read again next tick.
    """
    tick = notification_tick(
        warehouse.engine(),
        import_settings.companies(),
        since=dt.datetime.fromisoformat(context.cursor) if context.cursor else None,
        now=dt.datetime.now(dt.UTC),
    )
    for problem in tick.problems:
        context.log.warning(problem)
    return dg.SensorResult(skip_reason=tick.summary(), cursor=tick.since.isoformat())
