"""The end-to-end demo: sample uploads registered by the real sensor and imported in-process."""

import datetime as dt

import dagster as dg
from dagster._core.errors import DagsterHomeNotSetError
from sqlalchemy import select

from etl_assets.definitions import defs
from etl_assets.samples import age, write_demo_inbox
from etl_assets.warehouse.schema import uploads

REPORT_COMPANY, REPORT_MONTH = "acme", "2025-03"
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
COLUMNS = ["file", "company", "kind", "status", "imported", "updated", "rejected", "message"]


def run_demo() -> int:
    """Drop samples, run one sensor tick, execute the requested runs, print the journal."""
    try:
        instance = dg.DagsterInstance.get()
    except DagsterHomeNotSetError:
        instance = dg.DagsterInstance.ephemeral()
    with dg.build_resources(defs.resources) as resolved:
        paths = resolved.storage.paths()
        engine = resolved.warehouse.engine()
        settle_seconds = resolved.import_settings.settle_seconds
    started = dt.datetime.now(dt.UTC)
    files = write_demo_inbox(paths.inbox)
    age(files, settle_seconds + 1)
    print(f"dropped {len(files)} sample files into {paths.inbox}")

    ok = _tick("upload_sensor", instance)
    # Aggregates refresh exactly the days the sales imports touched, as the daemon would do.
    ok &= _tick("daily_sales_refresh_sensor", instance)
    ok &= _execute(instance, "dashboard_metrics_job")
    report_key = dg.MultiPartitionKey({"month": f"{REPORT_MONTH}-01", "company": REPORT_COMPANY})
    ok &= _execute(instance, "monthly_reports_job", partition_key=report_key)

    with engine.connect() as conn:
        rows = (
            conn.execute(
                select(uploads)
                .where(uploads.c.received_at >= started)
                .order_by(uploads.c.company, uploads.c.original_name)
            )
            .mappings()
            .all()
        )
    table = [
        [
            r["original_name"],
            r["company"] or "-",
            r["kind"] or "-",
            r["status"],
            _n(r["rows_imported"]),
            _n(r["rows_updated"]),
            _n(r["rows_rejected"]),
            (r["message"] or "")[:70],
        ]
        for r in rows
    ]
    _print_table(COLUMNS, table)
    print()
    print(f"warehouse : {engine.url.render_as_string(hide_password=True)}")
    print(f"landing   : {paths.landing}")
    print(f"rejected  : {paths.rejected}   (bad files, each with a .reason.txt)")
    print(f"rejects   : {paths.rejects}   (invalid rows: row, column, value, reason)")
    for report in sorted(paths.report_dir(REPORT_COMPANY, REPORT_MONTH).glob("*")):
        print(f"report    : {report}")
    print("runs      : `make dev`, then http://127.0.0.1:3000 (Runs, Assets, Automation)")
    failed = [r for r in rows if r["status"] in ("failed", "processing", "received")]
    return 0 if ok and not failed else 1


def _tick(sensor_name: str, instance: dg.DagsterInstance) -> bool:
    """Evaluate a sensor once and execute the runs it requests, in this process."""
    sensor = defs.resolve_sensor_def(sensor_name)
    with dg.build_sensor_context(instance=instance, resources=defs.resources) as context:
        result = sensor(context)
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    ok = True
    for run in result.run_requests:
        ok &= _execute(
            instance,
            run.job_name,
            partition_key=run.partition_key,
            tags=run.tags,
            run_config=run.run_config,
            asset_selection=run.asset_selection,
        )
    return ok


def _execute(
    instance: dg.DagsterInstance,
    job_name: str,
    partition_key: str | None = None,
    tags: dict[str, str] | None = None,
    run_config: dict | None = None,
    asset_selection: list[dg.AssetKey] | None = None,
) -> bool:
    job = defs.resolve_job_def(job_name)
    outcome = job.execute_in_process(
        instance=instance,
        partition_key=partition_key,
        tags=tags,
        run_config={**(run_config or {}), **QUIET},
        asset_selection=asset_selection,
    )
    what = partition_key or " .. ".join(
        v for k, v in (tags or {}).items() if "partition_range" in k
    )
    print(
        f"run {outcome.run_id[:8]} {job_name} {what}: {'success' if outcome.success else 'FAILED'}"
    )
    return outcome.success


def _n(value: int | None) -> str:
    return "-" if value is None else str(value)


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows, strict=False)]
    for line in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip())
