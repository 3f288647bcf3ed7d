"""Refresh the `daily_sales` days that each sales import touched."""

import datetime as dt
from collections.abc import Iterable

import dagster as dg

from etl_assets.defs.aggregates.jobs import daily_sales_job, rebuild_run_config
from etl_assets.defs.calendar import Calendar

SALES = dg.AssetKey("sales")
# Set by the `sales` asset: JSON list of "YYYY-MM-DD" days (calendar timezone).
DAYS_TOUCHED = "days_touched"
BATCH = 1000
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def touched_days(metadata: dict[str, dg.MetadataValue]) -> set[dt.date]:
    """The days a sales materialisation lists under `days_touched`; ValueError when malformed."""
    entry = metadata.get(DAYS_TOUCHED)
    if entry is None:
        return set()
    values = entry.value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ValueError(f"{DAYS_TOUCHED} must be a list of YYYY-MM-DD strings, got {values!r}")
    return {dt.date.fromisoformat(v) for v in values}


def contiguous_ranges(days: Iterable[dt.date]) -> list[tuple[dt.date, dt.date]]:
    """Coalesce days into sorted, inclusive (first, last) runs of consecutive days."""
    ranges: list[tuple[dt.date, dt.date]] = []
    for day in sorted(set(days)):
        if ranges and day == ranges[-1][1] + dt.timedelta(days=1):
            ranges[-1] = (ranges[-1][0], day)
        else:
            ranges.append((day, day))
    return ranges


def range_run_request(cursor: str, first: dt.date, last: dt.date) -> dg.RunRequest:
    """One `daily_sales_job` run for the range (a single day is a plain partition run)."""
    run_key = f"{cursor}:{first.isoformat()}:{last.isoformat()}"
    if first == last:
        return dg.RunRequest(
            run_key=run_key, job_name=daily_sales_job.name, partition_key=first.isoformat()
        )
    return dg.RunRequest(
        run_key=run_key,
        job_name=daily_sales_job.name,
        tags={RANGE_START_TAG: first.isoformat(), RANGE_END_TAG: last.isoformat()},
    )


def rebuild_run_request(
    cursor: str, rebuild_job: dg.JobDefinition, first: dt.date, last: dt.date
) -> dg.RunRequest:
    """A forced rebuild of days that have no `daily_sales` partition (before the start)."""
    return dg.RunRequest(
        run_key=f"{cursor}:rebuild:{first.isoformat()}:{last.isoformat()}",
        job_name=rebuild_job.name,
        run_config=rebuild_run_config(first, last, force=True),
    )


def build_daily_sales_refresh_sensor(
    calendar: Calendar, rebuild_job: dg.JobDefinition
) -> dg.SensorDefinition:
    """The sensor that refreshes the days each new `sales` materialisation touched."""
    partitions = calendar.daily()

    @dg.sensor(
        name="daily_sales_refresh_sensor",
        jobs=[daily_sales_job, rebuild_job],
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
        description="Requests daily_sales for the days each new sales import touched.",
    )
    def daily_sales_refresh_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        """One run per contiguous range of days touched by the imports since the cursor."""
        batch = context.instance.fetch_materializations(
            SALES, limit=BATCH, cursor=context.cursor, ascending=True
        )
        if not batch.records:
            return dg.SensorResult(skip_reason="no new sales imports", cursor=context.cursor)
        days: set[dt.date] = set()
        for record in batch.records:
            materialization = record.asset_materialization
            if materialization is None:
                continue
            try:
                days |= touched_days(materialization.metadata)
            except ValueError as exc:
                # Skipped, not retried: the same event would fail every tick and stall the sensor.
                context.log.warning(f"sales {materialization.partition}: {exc}")
        # Partitions exist from the calendar's start up to the last complete day. Today's (and
        # later) days are refreshed by the schedule once they are over; days before the start
        # have no partition, so the rebuild job (which takes any range) refreshes them.
        first = dt.date.fromisoformat(partitions.get_first_partition_key())
        last_key = partitions.get_last_partition_key()
        last = dt.date.fromisoformat(last_key) if last_key else first - dt.timedelta(days=1)
        later = sorted(d for d in days if d > last)
        if later:
            context.log.info(
                "left to the daily schedule (not over yet): "
                + ", ".join(d.isoformat() for d in later)
            )
        inside = contiguous_ranges(d for d in days if first <= d <= last)
        before = contiguous_ranges(d for d in days if d < first)
        return dg.SensorResult(
            run_requests=[range_run_request(batch.cursor, a, b) for a, b in inside]
            + [rebuild_run_request(batch.cursor, rebuild_job, a, b) for a, b in before],
            cursor=batch.cursor,
        )

    return daily_sales_refresh_sensor
