"""The end-to-end demo: sample uploads registered by the real sensor and imported in-process."""

import datetime as dt
import os

import dagster as dg
from sqlalchemy import select

from etl_assets.definitions import defs
from etl_assets.samples import age, write_demo_inbox
from etl_assets.warehouse.schema import uploads

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
COLUMNS = ["file", "company", "kind", "status", "imported", "updated", "rejected", "message"]


def run_demo() -> int:
    """Drop samples, run one sensor tick, execute the requested runs, print the journal."""
    instance = dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else None
    instance = instance or dg.DagsterInstance.ephemeral()
    with dg.build_resources(defs.resources) as resolved:
        paths = resolved.storage.paths()
        engine = resolved.warehouse.engine()
        settle_seconds = resolved.import_settings.settle_seconds
    started = dt.datetime.now(dt.UTC)
    files = write_demo_inbox(paths.inbox)
    age(files, settle_seconds + 1)
    print(f"dropped {len(files)} sample files into {paths.inbox}")

    sensor = defs.resolve_sensor_def("upload_sensor")
    with dg.build_sensor_context(instance=instance, resources=defs.resources) as context:
        result = sensor(context)
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    for run in result.run_requests:
        job = defs.resolve_job_def(run.job_name)
        outcome = job.execute_in_process(
            instance=instance, partition_key=run.partition_key, tags=run.tags, run_config=QUIET
        )
        print(
            f"run {outcome.run_id[:8]} {run.job_name} {run.partition_key}: "
            f"{'success' if outcome.success else 'FAILED'}"
        )

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
    print("runs      : `make dev`, then http://127.0.0.1:3000 (Runs, Assets > imports)")
    failed = [r for r in rows if r["status"] in ("failed", "processing", "received")]
    return 1 if failed else 0


def _n(value: int | None) -> str:
    return "-" if value is None else str(value)


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows, strict=False)]
    for line in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip())
